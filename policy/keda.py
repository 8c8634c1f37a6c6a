"""What KEDA makes of declared ScaledObjects, emulated for the policy rules: the replica bounds of
the HPA it creates, and the second autoscaler its admission webhook refuses.

Every citation is kedacore/keda@v2.20.2 (EMULATED_KEDA_RELEASE; infra/platform/pins.py installs
the same chart, tests/test_pins.py checks). Pure functions over policy Resources, like engines.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policy.engines import HPA, SCALED_OBJECT, Resource, min_replicas

EMULATED_KEDA_RELEASE = "2.20.2"
# An HPA with this annotation "false" is skipped by the webhook's check (scaledobject_webhook.go:273-275;
# the constant at apis/keda/v1alpha1/scaledobject_types.go:57).
HPA_OWNERSHIP_ANNOTATION = "validations.keda.sh/hpa-ownership"
# Without maxReplicaCount the HPA KEDA creates scales to 100 (apis/keda/v1alpha1/scaledobject_types.go:97,
# 312-316); the minimum is engines.min_replicas.
DEFAULT_MAX_REPLICAS = 100


def replica_bounds(scaled_object: Resource) -> tuple[int, int]:
    """(fewest, most) pods KEDA keeps the ScaledObject's target at."""
    return min_replicas(scaled_object), int(scaled_object.spec.get("maxReplicaCount", DEFAULT_MAX_REPLICAS))


def target(scaler: Resource) -> tuple[str, str, str]:
    """(namespace, group/version.kind, name) of what an HPA or a ScaledObject scales, as KEDA's
    webhook compares them: a ScaledObject's empty apiVersion and kind are apps/v1 and Deployment
    (apis/keda/v1alpha1/gvkr.go:24-52, GVKString at gvkr_types.go:47-49)."""
    ref: Mapping[str, Any] = scaler.spec.get("scaleTargetRef") or {}
    api_version = str(ref.get("apiVersion") or "apps/v1")
    group_version = api_version if "/" in api_version else f"/{api_version}"
    return scaler.namespace, f"{group_version}.{ref.get('kind') or 'Deployment'}", str(ref.get("name") or "")


def autoscaler_conflicts(resources: Sequence[Resource], settings: object = None) -> list[tuple[Resource, str]]:
    """ScaledObjects KEDA's admission webhook refuses, with its messages: one whose workload an HPA
    already scales (verifyHpas, apis/keda/v1alpha1/scaledobject_webhook.go:256-317, message at
    :308), and one whose workload another ScaledObject scales (verifyScaledObjects, :389-395).

    Both orders are refused here: an HPA created after its workload's ScaledObject passes the
    webhook, which validates ScaledObjects only (config/webhooks/validation_webhooks.yaml:21-33),
    but then two HPAs fight over the replica count.
    """
    scaled_objects = [r for r in resources if r.type == SCALED_OBJECT]
    if not scaled_objects:
        return []
    hpas: dict[tuple[str, str, str], Resource] = {}
    for hpa in (r for r in resources if r.type == HPA):
        if (hpa.metadata.get("annotations") or {}).get(HPA_OWNERSHIP_ANNOTATION) != "false":
            hpas.setdefault(target(hpa), hpa)
    problems = []
    first: dict[tuple[str, str, str], Resource] = {}
    for scaled_object in scaled_objects:
        key = target(scaled_object)
        _, kind, name = key
        hpa = hpas.get(key)
        if hpa is not None:
            problems.append(
                (
                    scaled_object,
                    f"KEDA's webhook refuses it: the workload '{name}' of type '{kind}' is already managed by the "
                    f"hpa '{hpa.object_name}'",
                )
            )
        other = first.setdefault(key, scaled_object)
        if other is not scaled_object:
            problems.append(
                (
                    scaled_object,
                    f"KEDA's webhook refuses it: the workload '{name}' of type '{kind}' is already managed by the "
                    f"ScaledObject '{other.object_name}'",
                )
            )
    return problems
