"""Cluster add-ons as pinned Helm charts: Envoy Gateway, metrics-server, kube-prometheus-stack, Flagger,
KEDA, and on EKS the Cluster Autoscaler and the NVIDIA device plugin."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infra.platform.pins import PINS

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


# Versions from the one table of pins (infra/platform/pins.py), which says which CRD release each
# brings. Envoy Gateway's chart carries the Gateway API CRDs.
ENVOY_GATEWAY = Chart(
    "envoy-gateway",
    "oci://docker.io/envoyproxy/gateway-helm",
    PINS["envoy-gateway"].version,
    None,
    "envoy-gateway-system",
    {},
)
METRICS_SERVER = Chart(
    "metrics-server",
    "metrics-server",
    PINS["metrics-server"].version,
    "https://kubernetes-sigs.github.io/metrics-server/",
    "kube-system",
    {},
)
KUBE_PROMETHEUS_STACK = Chart(
    "kube-prometheus-stack",
    "kube-prometheus-stack",
    PINS["kube-prometheus-stack"].version,
    "https://prometheus-community.github.io/helm-charts",
    "monitoring",
    # Grafana's sidecar loads the models' dashboard ConfigMaps from every namespace.
    {"grafana": {"sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "searchNamespace": "ALL"}}}},
)
FLAGGER = Chart(
    "flagger",
    "flagger",
    PINS["flagger"].version,
    "https://flagger.app",
    "flagger-system",
    {"meshProvider": "gatewayapi:v1", "metricsServer": "http://kube-prometheus-stack-prometheus.monitoring:9090"},
)
# KEDA: the operator, its metrics API server (which the HPAs it creates read) and the admission
# webhook that refuses a second autoscaler on a workload (kedacore/keda@v2.20.2
# apis/keda/v1alpha1/scaledobject_webhook.go:308, :391). Repository as in KEDA's install docs
# (`helm repo add kedacore https://kedacore.github.io/charts`). The chart's default values install
# the CRDs (kedacore/charts keda/values.yaml:L53-55, `crds.install: true`, at 1444d00).
KEDA = Chart("keda", "keda", PINS["keda"].version, "https://kedacore.github.io/charts", "keda", {})

# kubernetes/autoscaler@cluster-autoscaler-chart-9.59.0: chart `cluster-autoscaler` 9.59.0
# (cluster-autoscaler/charts/cluster-autoscaler/Chart.yaml:L10, L14), repository from its
# README.md:L8 (`helm repo add autoscaler https://kubernetes.github.io/autoscaler`).
CLUSTER_AUTOSCALER = Chart(
    "cluster-autoscaler",
    "cluster-autoscaler",
    PINS["cluster-autoscaler"].version,
    "https://kubernetes.github.io/autoscaler",
    "kube-system",
    {},
)
# The ServiceAccount the chart creates, named so the IAM role can trust exactly it (the chart
# defaults the name to its fullname: templates/_helpers.tpl:L93-L99, values.yaml:L390).
CLUSTER_AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"

# NVIDIA/k8s-device-plugin: chart `nvidia-device-plugin` (deployments/helm/nvidia-device-plugin/
# Chart.yaml:L2, L5 at tag v0.17.4), repository https://nvidia.github.io/k8s-device-plugin
# (README.md:L646 at v0.20.0); 0.17.4 is the version of the AWS guide's example
# (docs.aws.amazon.com/eks/latest/userguide/ml-eks-k8s-device-plugin.html, awsdocs/
# amazon-eks-user-guide@4cd40a7 latest/ug/ml/ml-eks-k8s-device-plugin.adoc), which also says that
# on the EKS-optimized AL2023 NVIDIA AMIs "you must install the NVIDIA Kubernetes device plugin".
# Default values place it: a required node affinity that accepts `nvidia.com/gpu.present=true`
# (values.yaml:L63-L84 at v0.17.4; the GPU node group carries that label) and a toleration of
# `nvidia.com/gpu` NoSchedule (values.yaml:L85-L92), our GPU taint's key and effect.
NVIDIA_DEVICE_PLUGIN = Chart(
    "nvidia-device-plugin",
    "nvidia-device-plugin",
    PINS["nvidia-device-plugin"].version,
    "https://nvidia.github.io/k8s-device-plugin",
    "nvidia-device-plugin",
    {},
)


def merged_values(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A stack's values over an add-on's defaults, as Helm merges a values file over the chart's:
    maps merge key by key, anything else (lists included) is replaced."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def cluster_autoscaler_values(cluster_name: Any, region: str, role_arn: Any, image_tag: str) -> dict[str, Any]:
    """Values of the Cluster Autoscaler release on EKS (kubernetes/autoscaler@cluster-autoscaler-
    chart-9.59.0 cluster-autoscaler/charts/cluster-autoscaler/README.md:L85-L98 and L346-L358):
    discover the cluster's node groups by tag, in the stack's region, with its own IAM role."""
    return {
        "cloudProvider": "aws",  # values.yaml:L144 (the default; explicit)
        # values.yaml:L17-L25: discovers ASGs tagged k8s.io/cluster-autoscaler/enabled and
        # k8s.io/cluster-autoscaler/<clusterName>; EKS tags managed node groups so ("Nodes launched as
        # part of a managed node group are automatically tagged for auto-discovery by the Kubernetes
        # Cluster Autoscaler", awsdocs/amazon-eks-user-guide@4d52b4d latest/ug/nodes/managed-node-groups.adoc:L37).
        "autoDiscovery": {"clusterName": cluster_name},
        "awsRegion": region,  # values.yaml:L75-L76, "required if cloudProvider=aws"
        "image": {"tag": image_tag},
        "rbac": {
            "serviceAccount": {
                "name": CLUSTER_AUTOSCALER_SERVICE_ACCOUNT,
                "annotations": {"eks.amazonaws.com/role-arn": role_arn},  # values.yaml:L384-L386
            }
        },
    }
