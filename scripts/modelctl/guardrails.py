"""The policy pack's rules applied to an offline run (every `modelctl plan`), and the
policy-pack config of each stack (`policy/config/<stack>.json`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.offline import DeclaredResource, OfflineRun
from infra.platform.nodes import NodePoolCapacity, node_pools
from infra.spec.settings import StackSettings, load_stack_settings, read_stack_config
from policy.engines import NodePool
from policy.rules import MANDATORY, RULES, ExternalObject, PolicySettings, Resource, Violation, evaluate

DISABLE_DEFAULT_PROVIDERS = "pulumi:disable-default-providers"


def disabled_default_providers(stack_config: Mapping[str, Any]) -> tuple[str, ...]:
    """Packages whose default provider the stack disables (`["*"]`: all)."""
    value = stack_config.get(DISABLE_DEFAULT_PROVIDERS) or ()
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else (str(value),)


def policy_settings(settings: StackSettings, stack_config: Mapping[str, Any]) -> PolicySettings:
    return PolicySettings(
        require_digest=settings.images.require_digest,
        production=settings.production,
        host=settings.routing.host,
        disabled_default_providers=disabled_default_providers(stack_config),
        external=tuple(ExternalObject(e.kind.value, e.name, e.namespace or "") for e in settings.external),
        node_pools=tuple(policy_node_pool(pool) for pool in node_pools(settings)),
    )


def policy_node_pool(pool: NodePoolCapacity, nodes: int | None = None) -> NodePool:
    """A stack's node pool as the `pods-schedule` rule takes it: as many nodes as the pool can
    have (its maximum under a node autoscaler, else its desired size), unless `nodes` says."""
    return NodePool(
        name=pool.name,
        labels=dict(pool.labels),
        taints=tuple({"key": t.key, "value": t.value or "", "effect": t.effect} for t in pool.taints),
        cpu_millis=pool.allocatable.cpu_millicores,
        memory_bytes=pool.allocatable.memory_bytes,
        gpus=pool.allocatable.gpus,
        nodes=pool.max if nodes is None else nodes,
        autoscaled=pool.autoscaled,
        max_pods=pool.max_pods,
    )


def stack_policy_settings(root: Path, stack: str) -> PolicySettings:
    return policy_settings(load_stack_settings(root, stack), read_stack_config(root, stack))


def policy_config(policy: PolicySettings) -> dict[str, Any]:
    """`--policy-pack-config` for `pulumi preview --policy-pack policy` on a stack: the same
    settings and enforcement levels the offline check uses."""
    properties = {
        "host": policy.host,
        "production": policy.production,
        "requireDigest": policy.require_digest,
        "disabledDefaultProviders": list(policy.disabled_default_providers),
        "external": [{"kind": e.kind, "name": e.name, "namespace": e.namespace} for e in policy.external],
        "nodePools": [
            {
                "name": p.name,
                "labels": dict(p.labels),
                "taints": [dict(t) for t in p.taints],
                "cpuMillis": p.cpu_millis,
                "memoryBytes": p.memory_bytes,
                "gpus": p.gpus,
                "nodes": p.nodes,
                "autoscaled": p.autoscaled,
                "maxPods": p.max_pods,
            }
            for p in policy.node_pools
        ],
    }
    return {rule.name: {"enforcementLevel": rule.enforcement(policy), **properties} for rule in RULES}


def as_policy_resource(resource: DeclaredResource) -> Resource:
    """What a policy sees of a declared resource: the object as the provider sends it (inputs
    plus the auto-name), and, for the engine check, which providers it names."""
    needs_provider = resource.custom or resource.remote
    return Resource(
        resource.type,
        resource.name,
        resource.object,
        engine_package=resource.package if needs_provider else None,
        explicit_providers=(
            {resource.package: provider}
            if needs_provider and (provider := resource.provider_for(resource.package))
            else {}
        ),
    )


def check(run: OfflineRun, policy: PolicySettings) -> list[Violation]:
    return evaluate([as_policy_resource(r) for r in run.resources], policy)


__all__ = ["MANDATORY", "check", "policy_config", "policy_settings", "stack_policy_settings"]
