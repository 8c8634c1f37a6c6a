"""Metric-gated rollouts with Flagger (Gateway API provider): a Canary and its MetricTemplates (pure builders).

With Flagger, a version bump changes the target Deployment's pod template; Flagger then
clones it to `<model>-primary`, shifts traffic step by step through the HTTPRoute it owns
(named after `service.name`, matching `/v1/models/<model>`), checks the metrics below at
every step and rolls back on failure (fluxcd/flagger pkg/router/gateway_api.go).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import keda, loadtest, tfserving
from infra.model.observability import latency_quantile, success_ratio
from infra.model.routing import route_path, verb_paths
from infra.model.workload import model_selector
from infra.platform.network import platform_labels
from infra.spec.manifest import ServedModel
from infra.spec.scaling import ScalingMetric
from infra.spec.settings import StackSettings

FLAGGER_API = "flagger.app/v1beta1"
SUCCESS_RATE = "success-rate"
LATENCY = "latency-p99"


# Containers Flagger's port discovery skips (pkg/canary/util.go L31-L34).
def _metadata(model: ServedModel, settings: StackSettings) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        namespace=settings.namespace, labels=dict(platform_labels()) | model_selector(model.name)
    )


def metric_templates(model: ServedModel, settings: StackSettings) -> dict[str, dict[str, Any]]:
    """MetricTemplate kwargs by metric name. Flagger fills `{{ namespace }}`, `{{ target }}`
    (the canary Deployment) and `{{ interval }}`; the canary pods are `<target>-<hash>-<id>`."""
    delivery = settings.progressive_delivery
    assert delivery is not None and delivery.prometheus_address is not None
    provider = {"type": "prometheus", "address": delivery.prometheus_address}
    pods = '{{ namespace }}", pod=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)'
    where = f'namespace="{pods}", model_name="{model.name}"'
    interval = "{{ interval }}"
    # Prediction calls only: the kubelet's probes would count as fast successes
    # (infra/model/observability.py explains the metrics and cites TF-Serving). Without
    # prediction traffic the query has no value, which Flagger counts as a failed check
    # (pkg/controller/scheduler_metrics.go L318-L324, scheduler.go L461-L462).
    success_rate = f"100 * {success_ratio(where, interval)}"
    latency_ms = f"{latency_quantile(0.99, where, interval)} / 1000"
    return {
        SUCCESS_RATE: {
            "api_version": FLAGGER_API,
            "kind": "MetricTemplate",
            "metadata": _metadata(model, settings),
            "spec": {"provider": provider, "query": success_rate},
        },
        LATENCY: {
            "api_version": FLAGGER_API,
            "kind": "MetricTemplate",
            "metadata": _metadata(model, settings),
            "spec": {"provider": provider, "query": latency_ms},
        },
    }


def autoscaler_ref(
    model: ServedModel, settings: StackSettings, deployment_name: pulumi.Input[str], autoscaler_name: pulumi.Input[str]
) -> dict[str, Any]:
    """The target's autoscaler, which Flagger copies for `<target>-primary` and pauses between analyses.

    A ScaledObject's copy is `<name>-primary`, aimed at the primary Deployment, with the queries of
    `primaryScalerQueries` by trigger name (fluxcd/flagger@v1.44.0
    pkg/canary/scaled_object_reconciler.go:L40-L79, L183-L192; kind ScaledObject at
    pkg/canary/factory.go:L116-L120); without them Flagger rewrites the target's name in each query
    (L193-L208). Ours names the primary's pods explicitly.
    """
    if model.serving.autoscaling.metric is not ScalingMetric.requests:
        return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": autoscaler_name}
    primary_query = pulumi.Output.from_input(deployment_name).apply(
        lambda target: keda.request_rate_query(settings.namespace, f"{target}-primary", model.name)
    )
    return {
        "apiVersion": keda.KEDA_API,
        "kind": keda.SCALED_OBJECT,
        "name": autoscaler_name,
        "primaryScalerQueries": {keda.TRIGGER: primary_query},
    }


def canary(
    model: ServedModel,
    settings: StackSettings,
    deployment_name: pulumi.Input[str],
    autoscaler_name: pulumi.Input[str],
    template_names: dict[str, pulumi.Input[str]],
) -> dict[str, Any]:
    """Canary kwargs: analysis settings from the manifest's `serving.rollout`, else the stack's."""
    delivery = settings.progressive_delivery
    gateway = settings.routing.gateway
    assert delivery is not None and gateway is not None
    rollout = model.serving.rollout
    interval = (rollout and rollout.interval) or delivery.interval
    gateway_ref: dict[str, Any] = {"name": gateway.name, "sectionName": gateway.listener}
    gateway_ref["namespace"] = gateway.namespace or settings.namespace
    slo = model.serving.slo
    return {
        "api_version": FLAGGER_API,
        "kind": "Canary",
        "metadata": _metadata(model, settings),
        "spec": {
            "provider": "gatewayapi:v1",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
            "autoscalerRef": autoscaler_ref(model, settings, deployment_name, autoscaler_name),
            "progressDeadlineSeconds": 900,
            "service": {
                # The apex Service and the HTTPRoute carry the model's name, as without Flagger.
                "name": model.name,
                "port": tfserving.REST_PORT,
                "targetPort": "http",
                "portName": "http",
                # Without discovery Flagger's apex, primary and canary Services carry only
                # `port` (pkg/router/kubernetes_default.go L103-L115); with it they also carry
                # every other container port, named as in the pod (L128-L141, getPorts in
                # pkg/canary/util.go L36-L70, called at pkg/canary/deployment_controller.go
                # L227-L230): gRPC 8500 is reachable. fluxcd/flagger@v1.44.0.
                "portDiscovery": True,
                "hosts": [settings.routing.host],
                "gatewayRefs": [gateway_ref],
                # Flagger turns `uri.prefix` into a PathPrefix match and `uri.exact` into an Exact
                # one (fluxcd/flagger@v1.44.0 pkg/router/gateway_api.go:L630-L645); the verbs on
                # the default version need their own (infra/model/routing.py, REST_VERBS).
                "match": [{"uri": {"prefix": route_path(model.name)}}]
                + [{"uri": {"exact": path}} for path in verb_paths(model.name)],
                # The primary and canary Services carry the model label, so the ServiceMonitor
                # scrapes each pod once; the apex Service (which selects the primary's pods
                # too) does not, or every series would be counted twice.
                **{part: {"labels": model_selector(model.name)} for part in ("primary", "canary")},
            },
            "analysis": {
                "interval": interval,
                "threshold": (rollout and rollout.threshold) or delivery.threshold,
                "stepWeight": (rollout and rollout.step_weight) or delivery.step_weight,
                "maxWeight": (rollout and rollout.max_weight) or delivery.max_weight,
                # The analysis drives its own traffic: without predictions the metrics have no
                # value and the release rolls back; gRPC never reaches the canary through the
                # Gateway (Flagger shifts HTTPRoutes only), so a webhook checks it directly.
                "webhooks": loadtest.webhooks(model, settings, interval),
                "metrics": [
                    {
                        "name": SUCCESS_RATE,
                        "templateRef": {"name": template_names[SUCCESS_RATE], "namespace": settings.namespace},
                        "thresholdRange": {"min": round(slo.availability * 100, 4)},
                        "interval": interval,
                    },
                    {
                        "name": LATENCY,
                        "templateRef": {"name": template_names[LATENCY], "namespace": settings.namespace},
                        "thresholdRange": {"max": slo.latency_p99_ms},
                        "interval": interval,
                    },
                ],
            },
        },
    }
