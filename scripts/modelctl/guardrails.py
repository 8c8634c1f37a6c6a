"""The policy pack's rules applied to an offline run (`modelctl plan --policy`), and the
policy-pack config of each stack (`policy/config/<stack>.json`)."""

from __future__ import annotations

from typing import Any

from infra.offline import OfflineRun
from infra.spec.settings import StackSettings
from policy.rules import MANDATORY, RULES, PolicySettings, Resource, Violation, evaluate


def policy_settings(settings: StackSettings) -> PolicySettings:
    return PolicySettings(
        require_digest=settings.images.require_digest, production=settings.production, host=settings.routing.host
    )


def policy_config(settings: StackSettings) -> dict[str, Any]:
    """`--policy-pack-config` for `pulumi preview --policy-pack policy` on this stack: the same
    settings and enforcement levels the offline check uses."""
    wanted = policy_settings(settings)
    properties = {"host": wanted.host, "production": wanted.production, "requireDigest": wanted.require_digest}
    return {rule.name: {"enforcementLevel": rule.enforcement(wanted), **properties} for rule in RULES}


def check(run: OfflineRun, settings: StackSettings) -> list[Violation]:
    resources = [Resource(r.type, r.name, r.inputs) for r in run.kubernetes_objects()]
    return evaluate(resources, policy_settings(settings))


__all__ = ["MANDATORY", "check", "policy_config", "policy_settings"]
