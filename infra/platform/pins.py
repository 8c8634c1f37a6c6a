"""The release of every add-on the platform installs, and of the CRDs and sources the code relies on.

One table, so a version moves in one place: `addons.py` installs these chart versions, the schema
tests validate against the CRDs vendored under `tests/schemas/<crds>/`, and tests/test_pins.py
fails when a chart, its vendored CRDs, the engine emulation (policy/fidelity.py) or a citation in
the code or README name different releases.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pin:
    """A chart version, and the upstream release whose CRDs and sources it brings."""

    chart: str  # the add-on's release name (addons.Chart.name)
    version: str  # the chart version installed
    crds: str | None = None  # "<project>-v<release>": the CRDs it installs, vendored in tests/schemas/
    # Where the chart -> release relation is read, or what is not verified.
    source: str = ""


# fluxcd/flagger has no v1.45.0 tag (tags at fluxcd/flagger@15bd6ad end at v1.44.0) and
# charts/flagger/Chart.yaml:L3-L4 at v1.44.0 say `version: 1.44.0`, `appVersion: 1.44.0`; its
# charts/flagger/crds/crd.yaml is byte-identical to artifacts/flagger/crd.yaml, vendored.
FLAGGER = Pin("flagger", "1.44.0", "flagger-v1.44.0", "fluxcd/flagger@v1.44.0 charts/flagger/Chart.yaml:L3-L4")
# Envoy Gateway's chart carries the Gateway API CRDs: at envoyproxy/gateway@v1.9.0 go.mod requires
# sigs.k8s.io/gateway-api v1.6.1 and charts/gateway-helm/charts/crds/crds/gatewayapi-crds.yaml:L27
# says `gateway.networking.k8s.io/bundle-version: v1.6.1`. (v1.9.2 is a patch release of that line;
# its tag was not in the snapshot read.)
ENVOY_GATEWAY = Pin(
    "envoy-gateway",
    "v1.9.2",
    "gateway-api-v1.6.1",
    "envoyproxy/gateway@v1.9.0 charts/gateway-helm/charts/crds/crds/gatewayapi-crds.yaml:L27",
)
# kube-prometheus-stack installs the Prometheus Operator's CRDs; the ServiceMonitor and
# PrometheusRule schemas are those of operator v0.93.0 (the chart's appVersion is not verified here).
KUBE_PROMETHEUS_STACK = Pin(
    "kube-prometheus-stack",
    "83.6.0",
    "prometheus-operator-v0.93.0",
    "prometheus-community/helm-charts kube-prometheus-stack 83.6.0 (appVersion not verified offline)",
)
METRICS_SERVER = Pin("metrics-server", "3.12.2", None, "kubernetes-sigs/metrics-server chart 3.12.2; no CRDs")
CLUSTER_AUTOSCALER = Pin(
    "cluster-autoscaler",
    "9.59.0",
    None,
    "kubernetes/autoscaler@cluster-autoscaler-chart-9.59.0 cluster-autoscaler/charts/cluster-autoscaler/Chart.yaml:L10",
)
NVIDIA_DEVICE_PLUGIN = Pin(
    "nvidia-device-plugin",
    "0.17.4",
    None,
    "NVIDIA/k8s-device-plugin@v0.17.4 deployments/helm/nvidia-device-plugin/Chart.yaml:L2, L5",
)

# KEDA's chart (kedacore/charts, `keda`) is released with the same version as KEDA itself:
# kedacore/charts keda/Chart.yaml:L11 `version: 2.20.2`, :L15 `appVersion: 2.20.2` (commit cbb9bb8
# "prepare v2.20.2 release", read at 1444d00). The ScaledObject schema vendored is
# kedacore/keda@v2.20.2 config/crd/bases/keda.sh_scaledobjects.yaml, and the code cites that tag.
KEDA = Pin("keda", "2.20.2", "keda-v2.20.2", "kedacore/charts keda/Chart.yaml:L11, L15 (2.20.2, appVersion 2.20.2)")

PINS: dict[str, Pin] = {
    pin.chart: pin
    for pin in (
        FLAGGER,
        ENVOY_GATEWAY,
        KUBE_PROMETHEUS_STACK,
        METRICS_SERVER,
        CLUSTER_AUTOSCALER,
        NVIDIA_DEVICE_PLUGIN,
        KEDA,
    )
}
