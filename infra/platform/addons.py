"""Cluster add-ons as pinned Helm charts: Envoy Gateway, metrics-server, kube-prometheus-stack, Flagger."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

EXACT_CHART_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+$")


@dataclass(frozen=True)
class Chart:
    """A Helm release, pinned: chart, exact version, repository, namespace."""

    name: str
    chart: str
    version: str
    repository: str | None
    namespace: str
    values: dict[str, Any]


# Versions as published (each seen pinned in public install instructions). Envoy Gateway's
# chart carries the Gateway API CRDs.
ENVOY_GATEWAY = Chart(
    "envoy-gateway", "oci://docker.io/envoyproxy/gateway-helm", "v1.9.2", None, "envoy-gateway-system", {}
)
METRICS_SERVER = Chart(
    "metrics-server",
    "metrics-server",
    "3.12.2",
    "https://kubernetes-sigs.github.io/metrics-server/",
    "kube-system",
    {},
)
KUBE_PROMETHEUS_STACK = Chart(
    "kube-prometheus-stack",
    "kube-prometheus-stack",
    "83.6.0",
    "https://prometheus-community.github.io/helm-charts",
    "monitoring",
    # Grafana's sidecar loads the models' dashboard ConfigMaps from every namespace.
    {"grafana": {"sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "searchNamespace": "ALL"}}}},
)
FLAGGER = Chart(
    "flagger",
    "flagger",
    "1.45.0",
    "https://flagger.app",
    "flagger-system",
    {"meshProvider": "gatewayapi:v1", "metricsServer": "http://kube-prometheus-stack-prometheus.monitoring:9090"},
)
