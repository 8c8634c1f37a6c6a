"""What a workload's autoscaler scales on: the rule shared by a manifest's `serving.autoscaling` and a
serving pool's `autoscaling` (docs/autoscaling.md)."""

from __future__ import annotations

from enum import StrEnum


class ScalingMetric(StrEnum):
    """The signal a workload scales on."""

    cpu = "cpu"  # an autoscaling/v2 HorizontalPodAutoscaler on CPU utilisation (the default)
    requests = "requests"  # a KEDA ScaledObject on TF-Serving's prediction-call rate per replica


def metric_problems(metric: ScalingMetric, target_rps: float | None, target_field: str) -> list[tuple[str, str]]:
    """(field, message) when the per-replica request-rate target and the metric disagree: required
    with `requests`, refused with `cpu` (it would be silently ignored)."""
    if metric is ScalingMetric.requests and target_rps is None:
        return [(target_field, "required when metric is requests: the prediction calls per second one replica takes")]
    if metric is ScalingMetric.cpu and target_rps is not None:
        return [(target_field, f"Got {target_rps:g}, but metric is cpu; set metric: requests, or drop it")]
    return []
