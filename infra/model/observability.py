"""Monitoring of one model: ServiceMonitor, PrometheusRule alerts and a Grafana dashboard (pure builders).

Metric names are TF-Serving's Prometheus export (`--monitoring_config_file`): TensorFlow's
`/tensorflow/serving/request_count` becomes `:tensorflow:serving:request_count`, labelled
`model_name` and `status`; `request_latency` is a histogram in microseconds. Replica and
autoscaler figures come from kube-state-metrics, which kube-prometheus-stack installs.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.model.workload import MODEL_LABEL, TRACK_LABEL, VERSION_LABEL, model_selector
from infra.platform.network import platform_labels
from infra.spec.manifest import ServedModel
from infra.spec.settings import StackSettings

MONITORING_API = "monitoring.coreos.com/v1"
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY_BUCKET = ":tensorflow:serving:request_latency_bucket"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
SCRAPE_INTERVAL = "30s"
ALERT_WINDOW = "5m"
DASHBOARD_LABEL = "grafana_dashboard"  # what Grafana's dashboard sidecar watches for


def _prometheus_label(kubernetes_label: str) -> str:
    """How Prometheus' Kubernetes discovery spells a pod label: every non-alphanumeric is `_`."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in kubernetes_label)


def selectors(model: ServedModel, namespace: str) -> str:
    return f'namespace="{namespace}", model_name="{model.name}"'


def service_monitor(model: ServedModel, settings: StackSettings) -> dict[str, Any]:
    """Scrapes TF-Serving's Prometheus endpoint on every Service of the model (stable, canary),
    labelling each series with the pod's `version` and `track`."""
    return {
        "api_version": MONITORING_API,
        "kind": "ServiceMonitor",
        "metadata": _metadata(model, settings),
        "spec": {
            "selector": {"matchLabels": model_selector(model.name)},
            "namespaceSelector": {"matchNames": [settings.namespace]},
            "endpoints": [
                {
                    "port": "http",
                    "path": tfserving.PROMETHEUS_PATH,
                    "interval": SCRAPE_INTERVAL,
                    "relabelings": [
                        {"sourceLabels": [_prometheus_label(VERSION_LABEL)], "targetLabel": "version"},
                        {"sourceLabels": [_prometheus_label(TRACK_LABEL)], "targetLabel": "track"},
                        {"sourceLabels": [_prometheus_label(MODEL_LABEL)], "targetLabel": "model"},
                    ],
                }
            ],
        },
    }


def alert_rules(model: ServedModel, namespace: str) -> list[dict[str, Any]]:
    """The alerts of one model; every expression names it (and its namespace)."""
    slo = model.serving.slo
    where = selectors(model, namespace)
    error_budget = round(1 - slo.availability, 6)
    latency_us = slo.latency_p99_ms * 1000
    hpa = f"{model.name}-hpa-.+"  # the stable track's autoscaler (Pulumi auto-names it)
    labels = {"model": model.name, "namespace": namespace}
    base_path = tfserving.model_base_path(model.name)

    def alert(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": duration,
            "labels": labels | {"severity": severity},
            "annotations": {"summary": summary, "model": model.name},
        }

    return [
        alert(
            "ModelNoReadyReplica",
            # Only ready pods are endpoints of the Service, so no `up` series means none is ready
            # (under Flagger the stable pods are the `-primary` Service's).
            f'absent(up{{namespace="{namespace}", service=~"{model.name}(-primary)?"}} == 1)',
            "5m",
            "critical",
            f"{model.name}: no ready replica serves the stable version",
        ),
        alert(
            "ModelErrorRatioAboveSLO",
            f'sum(rate({REQUEST_COUNT}{{{where}, status!="OK"}}[{ALERT_WINDOW}])) '
            f"/ sum(rate({REQUEST_COUNT}{{{where}}}[{ALERT_WINDOW}])) > {error_budget}",
            "10m",
            "critical",
            f"{model.name}: more than {error_budget:.2%} of requests fail (SLO availability {slo.availability})",
        ),
        alert(
            "ModelLatencyP99AboveSLO",
            f"histogram_quantile(0.99, sum by (le) (rate({REQUEST_LATENCY_BUCKET}{{{where}}}[{ALERT_WINDOW}]))) "
            f"> {latency_us:g}",
            "10m",
            "warning",
            f"{model.name}: p99 latency above {slo.latency_p99_ms:g} ms",
        ),
        alert(
            "ModelAutoscalerAtMax",
            f'kube_horizontalpodautoscaler_status_current_replicas{{namespace="{namespace}", '
            f'horizontalpodautoscaler=~"{hpa}"}} >= kube_horizontalpodautoscaler_spec_max_replicas'
            f'{{namespace="{namespace}", horizontalpodautoscaler=~"{hpa}"}}',
            "15m",
            "warning",
            f"{model.name}: the autoscaler is pinned at its maximum; raise max_replicas or resources",
        ),
        alert(
            "ModelVersionFailedToLoad",
            f'sum(increase({LOAD_ATTEMPTS}{{namespace="{namespace}", model_path=~"{base_path}/.*", '
            f'status!="success"}}[15m])) > 0',
            "0m",
            "critical",
            f"{model.name}: a served version failed to load",
        ),
    ]


def prometheus_rule(model: ServedModel, settings: StackSettings) -> dict[str, Any]:
    return {
        "api_version": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _metadata(model, settings),
        "spec": {"groups": [{"name": f"model-serving.{model.name}", "rules": alert_rules(model, settings.namespace)}]},
    }


def dashboard(model: ServedModel, namespace: str) -> dict[str, Any]:
    """A Grafana dashboard (JSON model): requests, errors, latency quantiles and replicas, per version."""
    where = selectors(model, namespace)

    def panel(number: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
        return {
            "id": number,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "gridPos": {"h": 8, "w": 12, "x": 12 * ((number - 1) % 2), "y": 8 * ((number - 1) // 2)},
            "targets": [
                {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(targets)
            ],
        }

    panels = [
        panel(
            1,
            "Requests per second",
            "reqps",
            [
                (f"sum by (version) (rate({REQUEST_COUNT}{{{where}}}[5m]))", "v{{version}}"),
            ],
        ),
        panel(
            2,
            "Error ratio",
            "percentunit",
            [
                (
                    f'sum by (version) (rate({REQUEST_COUNT}{{{where}, status!="OK"}}[5m])) '
                    f"/ sum by (version) (rate({REQUEST_COUNT}{{{where}}}[5m]))",
                    "v{{version}}",
                ),
            ],
        ),
        panel(
            3,
            "Latency",
            "µs",
            [
                (
                    f"histogram_quantile({q}, sum by (le, version) (rate({REQUEST_LATENCY_BUCKET}{{{where}}}[5m])))",
                    f"p{int(q * 100)} v{{{{version}}}}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
        ),
        panel(
            4,
            "Serving replicas",
            "short",
            [
                (
                    f'count by (version, track) (up{{namespace="{namespace}", model="{model.name}"}} == 1)',
                    "v{{version}} {{track}}",
                ),
            ],
        ),
    ]
    return {
        "uid": f"model-serving-{model.name}"[:40],
        "title": f"Model {model.name}",
        "tags": ["model-serving", model.name],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def dashboard_config_map(model: ServedModel, settings: StackSettings) -> dict[str, Any]:
    monitoring = settings.monitoring
    labels = dict(platform_labels()) | model_selector(model.name) | {DASHBOARD_LABEL: "1"}
    return {
        "metadata": k8s.meta.v1.ObjectMetaArgs(
            namespace=monitoring.dashboard_namespace or settings.namespace, labels=labels
        ),
        "data": {f"model-{model.name}.json": json.dumps(dashboard(model, settings.namespace), indent=2)},
    }


def _metadata(model: ServedModel, settings: StackSettings) -> k8s.meta.v1.ObjectMetaArgs:
    labels = dict(platform_labels()) | model_selector(model.name) | dict(settings.monitoring.selector_labels)
    return k8s.meta.v1.ObjectMetaArgs(namespace=settings.namespace, labels=labels)
