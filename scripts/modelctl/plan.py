"""The offline plan: what a change does to each stack, step by step, with pulumi-kubernetes' rules.

Resources of the base and the head run are matched by URN. Each step is same, create,
update, replace or delete, with the property paths that differ in Pulumi's detailedDiff
notation (`spec.template.spec.containers[0].args[1]`, `data["models.config"]`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from infra.model.component import MODEL_TYPE
from infra.model.pool_component import POOL_TYPE
from infra.model.workload import INSTANCE_LABEL
from infra.offline import DeclaredResource, OfflineRun
from infra.platform.component import PLATFORM_TYPE
from policy.engines import HPA, SCALED_OBJECT, Resource
from policy.keda import replica_bounds

PLATFORM = "platform"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
# A change under it rolls every pod of the Deployment: in a pool, every member restarts.
POD_TEMPLATE = "spec.template"


class ComponentKind(StrEnum):
    """What owns a resource: the stack itself, the platform, one model, or a serving pool."""

    stack = "stack"
    platform = "platform"
    model = "model"
    pool = "pool"


# The component resources a resource is owned by, by type token (its nearest such ancestor).
COMPONENT_KINDS = {
    PLATFORM_TYPE: ComponentKind.platform,
    MODEL_TYPE: ComponentKind.model,
    POOL_TYPE: ComponentKind.pool,
}


@dataclass(frozen=True, order=True)
class Component:
    kind: ComponentKind
    name: str  # "" for the stack's own resources


STACK_ITSELF = Component(ComponentKind.stack, "")


class Op(StrEnum):
    same = "same"
    create = "create"
    update = "update"
    replace = "replace"
    delete = "delete"


class DiffKind(StrEnum):
    """Pulumi's detailedDiff kinds (sdk/go/common/resource/plugin: DiffKind.String())."""

    add = "add"
    add_replace = "add-replace"
    delete = "delete"
    delete_replace = "delete-replace"
    update = "update"
    update_replace = "update-replace"


# Property paths whose change makes pulumi-kubernetes replace rather than update, from
# pulumi-kubernetes provider/pkg/provider/diff.go (`forceNewProperties`): metadata name
# and namespace for every kind, plus per kind. Immutable ConfigMaps and Secrets are
# replaced on any data change, and ConfigMaps are by default (`enableConfigMapMutable`
# off). Paths are matched as prefixes of the changed path.
_METADATA_FORCE_NEW = ("metadata.name", "metadata.namespace")
_SELECTOR = "spec.selector"
FORCE_NEW: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:Deployment": (_SELECTOR,),
    "kubernetes:apps/v1:DaemonSet": (_SELECTOR,),
    "kubernetes:apps/v1:StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        _SELECTOR,
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "kubernetes:core/v1:ConfigMap": ("data", "binaryData"),
    "kubernetes:core/v1:Secret": ("type", "stringData", "data"),
    "kubernetes:core/v1:Service": ("spec.clusterIP",),
    "kubernetes:core/v1:PersistentVolumeClaim": (
        "spec.accessModes",
        "spec.selector",
        "spec.storageClassName",
        "spec.volumeName",
    ),
    "kubernetes:batch/v1:Job": ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": ("roleRef",),
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding": ("roleRef",),
    "kubernetes:storage.k8s.io/v1:StorageClass": ("parameters", "provisioner"),
}
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


@dataclass(frozen=True)
class PropertyDiff:
    path: str
    kind: DiffKind

    @property
    def replaces(self) -> bool:
        return self.kind.value.endswith("-replace")


@dataclass(frozen=True)
class Step:
    op: Op
    urn: str
    type: str
    name: str
    component: str  # "platform", a model name, a pool's shard, or "" for the stack's own resources
    kind: ComponentKind  # which of those `component` is
    old: DeclaredResource | None
    new: DeclaredResource | None
    diffs: tuple[PropertyDiff, ...] = ()

    @property
    def resource(self) -> DeclaredResource:
        resource = self.new or self.old
        assert resource is not None
        return resource

    @property
    def diff_reasons(self) -> list[str]:
        """Top-level properties that differ, as `pulumi preview --json` lists them."""
        return sorted({_top(d.path) for d in self.diffs})

    @property
    def replace_reasons(self) -> list[str]:
        return sorted({_top(d.path) for d in self.diffs if d.replaces})

    @property
    def model(self) -> str | None:
        return self.component if self.kind is ComponentKind.model else None

    @property
    def pool(self) -> str | None:
        return self.component if self.kind is ComponentKind.pool else None

    @property
    def restarts_pods(self) -> bool:
        """A Deployment whose pods roll: replaced, or its pod template changed."""
        if self.type != DEPLOYMENT or self.op not in (Op.update, Op.replace):
            return False
        return self.op is Op.replace or any(_under(d.path, POD_TEMPLATE) for d in self.diffs)


@dataclass(frozen=True)
class PoolImpact:
    """What the changes to one serving pool's resources do to the models it serves."""

    pool: str
    base_members: tuple[str, ...]
    head_members: tuple[str, ...]
    changes: tuple[Step, ...]

    @property
    def members(self) -> list[str]:
        return sorted(set(self.base_members) | set(self.head_members))

    @property
    def workload(self) -> str:
        """create, delete, restart (its pods roll) or keep (they keep running)."""
        deployment = next((s for s in self.changes if s.type == DEPLOYMENT), None)
        if deployment is not None and deployment.op in (Op.create, Op.delete):
            return deployment.op.value
        return "restart" if any(s.restarts_pods for s in self.changes) else "keep"

    @property
    def restarting(self) -> list[str]:
        """Members served before and after whose pods roll (a joining member starts, a leaving one stops)."""
        return sorted(set(self.base_members) & set(self.head_members)) if self.workload == "restart" else []

    @property
    def joining(self) -> list[str]:
        return sorted(set(self.head_members) - set(self.base_members))

    @property
    def leaving(self) -> list[str]:
        return sorted(set(self.base_members) - set(self.head_members))

    def describe(self, name=str) -> str:
        """One sentence; `name` formats a pool or model name (markdown quotes it)."""
        pool = f"pool {name(self.pool)}"
        head, base = self.head_members, self.base_members
        if self.workload == "create":
            return f"{pool} is new: {_count(head, 'starts', 'start')} in it ({_list(head, name)})"
        if self.workload == "delete":
            return f"{pool} is deleted: {_count(base, 'leaves', 'leave')} it ({_list(base, name)})"
        if self.workload == "restart":
            text = f"{pool}: {_count(self.restarting, 'restarts', 'restart')} ({_list(self.restarting, name)})"
            text += f"; joining: {_list(self.joining, name)}" if self.joining else ""
            return text + (f"; leaving: {_list(self.leaving, name)}" if self.leaving else "")
        changed = ", ".join(
            f"{s.type.rsplit(':', 1)[-1]} {s.op.value}d" for s in sorted(self.changes, key=lambda s: s.type)
        )
        members = f"{_count(self.members, 'keeps', 'keep')} serving ({_list(self.members, name)})"
        return f"{pool}: no model restarts ({changed}); {members}"

    def edited_members(self, touched_models: Collection[str] | None) -> list[str] | None:
        """Its members (before or after) among `touched_models` (None: unknown)."""
        return None if touched_models is None else [m for m in self.members if m in touched_models]

    def as_json(self, caused_by: list[str] | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "pool": self.pool,
            "workload": self.workload,
            "members": self.members,
            "restarting": self.restarting,
            "joining": self.joining,
            "leaving": self.leaving,
            "summary": self.describe(),
        }
        if caused_by is not None:
            document["causedBy"] = caused_by
        return document


# How many names a pool's sentence lists before "and N more" (a pool holds maxModels at most).
POOL_NAMES = 50


def _list(names: Iterable[str], name=str) -> str:
    names = list(names)
    shown = ", ".join(name(n) for n in names[:POOL_NAMES])
    return shown + (f" and {len(names) - POOL_NAMES} more" if len(names) > POOL_NAMES else "")


def _count(names: Sequence[str], one: str, many: str) -> str:
    """`1 model restarts`, `2 models restart`: `one` and `many` are the verb's forms."""
    return f"1 model {one}" if len(names) == 1 else f"{len(names)} models {many}"


def pool_members(outputs: Mapping[str, Any]) -> dict[str, list[str]]:
    """Shard -> members, from a run's `pools` stack output (none before pools existed)."""
    pools = outputs.get("pools")
    if not isinstance(pools, Mapping):
        return {}
    return {str(p): [str(m) for m in members] for p, members in pools.items() if isinstance(members, list)}


@dataclass
class StackPlan:
    stack: str
    steps: list[Step]
    base_outputs: dict[str, Any] = field(default_factory=dict)
    head_outputs: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step.op.value] = counts.get(step.op.value, 0) + 1
        return counts

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.op is not Op.same]

    def models_with_changes(self) -> list[str]:
        """Models whose own resources (their ModelDeployment's) change."""
        return sorted({s.model for s in self.changes if s.model})

    def pool_impacts(self) -> list[PoolImpact]:
        """One per pool with a change, by shard name."""
        base, head = pool_members(self.base_outputs), pool_members(self.head_outputs)
        steps: dict[str, list[Step]] = {}
        for step in self.changes:
            if step.pool:
                steps.setdefault(step.pool, []).append(step)
        return [
            PoolImpact(pool, tuple(base.get(pool, ())), tuple(head.get(pool, ())), tuple(changes))
            for pool, changes in sorted(steps.items())
        ]

    def affected_models(self) -> list[str]:
        """Models with changes of their own, and every member of a pool that changes."""
        pooled = {m for impact in self.pool_impacts() for m in impact.members}
        return sorted(set(self.models_with_changes()) | pooled)

    @property
    def platform_changed(self) -> bool:
        return any(s.kind is ComponentKind.platform for s in self.changes)


def _top(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def format_path(parts: Iterable[str | int]) -> str:
    """Pulumi's property path notation: `a.b[0]`, `data["models.config"]`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part) and not any(c in part for c in '."[]'):
            text += f".{part}" if text else part
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            text += f'["{escaped}"]'
    return text


def _differences(old: Any, new: Any, parts: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple, str]]:
    """(path parts, add|delete|update) for every leaf-level difference of two JSON values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                yield (*parts, key), "add"
            elif key not in new:
                yield (*parts, key), "delete"
            else:
                yield from _differences(old[key], new[key], (*parts, key))
    elif isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            if index >= len(old):
                yield (*parts, index), "add"
            elif index >= len(new):
                yield (*parts, index), "delete"
            else:
                yield from _differences(old[index], new[index], (*parts, index))
    elif old != new or type(old) is not type(new):
        yield parts, "update"


def _forces_replace(resource_type: str, parts: tuple) -> bool:
    path = ".".join(str(p) for p in parts if not isinstance(p, int))
    for prefix in _METADATA_FORCE_NEW + FORCE_NEW.get(resource_type, ()):
        if path == prefix or path.startswith(prefix + "."):
            return True
    return False


def property_diffs(resource_type: str, old: dict, new: dict) -> tuple[PropertyDiff, ...]:
    diffs = []
    for parts, kind in _differences(old, new):
        suffix = "-replace" if _forces_replace(resource_type, parts) else ""
        diffs.append(PropertyDiff(format_path(parts), DiffKind(kind + suffix)))
    return tuple(diffs)


def components(run: OfflineRun) -> dict[str, Component]:
    """URN -> the component that owns it: its nearest ancestor (or itself) that is the platform,
    a model or a pool; else the stack itself."""
    by_urn = run.by_urn()
    owners: dict[str, Component] = {}

    def owner(urn: str) -> Component:
        if urn not in owners:
            resource = by_urn.get(urn)
            if resource is None:
                owners[urn] = STACK_ITSELF
            elif resource.type in COMPONENT_KINDS:
                owners[urn] = Component(COMPONENT_KINDS[resource.type], resource.name)
            else:
                owners[urn] = owner(resource.parent) if resource.parent else STACK_ITSELF
        return owners[urn]

    for resource in run.resources:
        owner(resource.urn)
    return owners


def plan_stack(stack: str, base: OfflineRun, head: OfflineRun) -> StackPlan:
    """Steps that take `base` to `head`, in the head's order, deletions last."""
    old, new = base.by_urn(), head.by_urn()
    owners = components(base) | components(head)
    steps = []
    for resource in head.resources:
        before = old.get(resource.urn)
        owner = owners[resource.urn]
        if before is None:
            steps.append(
                Step(Op.create, resource.urn, resource.type, resource.name, owner.name, owner.kind, None, resource)
            )
            continue
        # Pulumi diffs the inputs the program gave (auto-names are kept on update). An
        # incremental plan gives both sides an unchanged model's very same inputs: no walk.
        same_inputs = before.inputs is resource.inputs
        diffs = () if same_inputs else property_diffs(resource.type, before.inputs, resource.inputs)
        op = Op.same if not diffs else Op.replace if any(d.replaces for d in diffs) else Op.update
        steps.append(
            Step(op, resource.urn, resource.type, resource.name, owner.name, owner.kind, before, resource, diffs)
        )
    for resource in base.resources:
        if resource.urn not in new:
            owner = owners[resource.urn]
            steps.append(
                Step(Op.delete, resource.urn, resource.type, resource.name, owner.name, owner.kind, resource, None)
            )
    # The stack's own, the platform, then models and pools by name together (a pooled model's
    # routes next to its shard's resources when the names sort so).
    order = {ComponentKind.stack: 0, ComponentKind.platform: 1}
    steps.sort(key=lambda s: (order.get(s.kind, 2), s.component, s.kind, s.type, s.name))
    return StackPlan(stack, steps, base.outputs, head.outputs)


# Capacity -------------------------------------------------------------------------------------


# A serving pool's Deployment says which models it serves and the memory each one's share of
# the pod request is (JSON: {"<model>": <bytes>}); the pools' program writes it.
MEMBERS_ANNOTATION = "model-serving.dev/members"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Capacity:
    """Replica bounds and the serving containers' requests of one model's or pool's workload in one
    stack; a pool's members with the memory each adds to its pods."""

    min_replicas: int
    max_replicas: int
    cpu: float  # cores requested per pod
    memory: float  # bytes requested per pod
    gpu: float = 0.0  # GPUs requested per pod
    members: tuple[tuple[str, int], ...] = ()  # a pool's (model, member memory bytes), by name
    kind: ComponentKind = ComponentKind.model  # whose workload: a model's, or a pool's (its members')
    # The model a workload serves when its name is not the model's: a canary's or a shadow's.
    model: str | None = None

    def totals(self) -> dict[str, tuple[float, float]]:
        return {
            "cpu": (self.min_replicas * self.cpu, self.max_replicas * self.cpu),
            "memory": (self.min_replicas * self.memory, self.max_replicas * self.memory),
            "gpu": (self.min_replicas * self.gpu, self.max_replicas * self.gpu),
        }


def _members(deployment: dict) -> tuple[tuple[str, int], ...]:
    text = deployment.get("metadata", {}).get("annotations", {}).get(MEMBERS_ANNOTATION)
    if text is None:
        return ()
    members = json.loads(text)
    if not isinstance(members, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in members.items()
    ):
        raise ValueError(f"{MEMBERS_ANNOTATION}: expected {{model: memory bytes}}, got {text[:200]!r}")
    return tuple(sorted(members.items()))


def _request(requests: list[dict], resource: str, limits: list[dict]) -> float:
    # An extended resource (nvidia.com/gpu) may be given as a limit alone: its request is then the limit.
    return float(
        sum(parse_quantity(r.get(resource, lim.get(resource, 0))) for r, lim in zip(requests, limits, strict=True))
    )


def capacity(run: OfflineRun) -> dict[str, Capacity]:
    """Per workload (by name): autoscaler bounds (HPA, or KEDA ScaledObject) x the Deployment's
    container requests (init containers excluded: they finish before the pod serves).

    A model's workloads are its tracks, each its own Deployment and autoscaler: `iris` (stable),
    `iris-canary`, `iris-shadow` (their instance label, infra/model/workload.py), each counted with
    the autoscaler that scales it (its scaleTargetRef names the Deployment), and `model` names the
    model the others belong to. A pool's workload is its shard's; the platform's by its owner."""
    owners = components(run)
    deployments: dict[str, tuple[Component, DeclaredResource]] = {}
    scalers: dict[str, dict] = {}  # by owner, the last one (the platform's)
    scaling: dict[tuple[str, str], dict] = {}  # by (namespace, the Deployment it scales)
    for resource in run.kubernetes_objects():
        owner = owners.get(resource.urn, STACK_ITSELF)
        if resource.type == DEPLOYMENT:
            instance = ((resource.inputs.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL)
            workload = instance if owner.kind is ComponentKind.model and instance else owner.name
            deployments[workload] = (owner, resource)
            continue
        if resource.type == HPA:
            spec = resource.inputs.get("spec") or {}
        elif resource.type == SCALED_OBJECT:  # metric requests: KEDA's bounds, with its defaults
            low, high = replica_bounds(Resource(resource.type, resource.name, resource.inputs))
            target_ref = (resource.inputs.get("spec") or {}).get("scaleTargetRef")
            spec = {"minReplicas": low, "maxReplicas": high, "scaleTargetRef": target_ref}
        else:
            continue
        scalers[owner.name] = spec
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if isinstance(target, str):
            scaling[(_namespace(resource), target)] = spec
    result = {}
    for workload, (owner, resource) in deployments.items():
        deployment = resource.inputs
        containers = deployment["spec"]["template"]["spec"]["containers"]
        requests = [c.get("resources", {}).get("requests", {}) for c in containers]
        limits = [c.get("resources", {}).get("limits", {}) for c in containers]
        cpu = float(sum(parse_quantity(r.get("cpu", 0)) for r in requests))
        memory = float(sum(parse_quantity(r.get("memory", 0)) for r in requests))
        gpu = _request(requests, GPU_RESOURCE, limits)
        name = (resource.state.get("metadata") or {}).get("name")
        scaler = scaling.get((_namespace(resource), name)) if isinstance(name, str) else None
        if scaler is None:
            scaler = scalers.get(owner.name, {}) if workload == owner.name else {}
        replicas = deployment["spec"].get("replicas", 1)
        result[workload] = Capacity(
            scaler.get("minReplicas", replicas),
            scaler.get("maxReplicas", replicas),
            cpu,
            memory,
            gpu,
            _members(deployment),
            owner.kind,
            owner.name if owner.kind is ComponentKind.model and workload != owner.name else None,
        )
    return result


def _namespace(resource: DeclaredResource) -> str:
    return str((resource.state.get("metadata") or {}).get("namespace") or "")
