"""Monitoring of one model: ServiceMonitor, PrometheusRule alerts and a Grafana dashboard (pure builders).

Metric names are TF-Serving's Prometheus export (`--monitoring_config_file`): TensorFlow's
`/tensorflow/serving/request_count` becomes `:tensorflow:serving:request_count`
(tensorflow_serving/util/prometheus_exporter.cc L42-L63), labelled `model_name` and
`status`; `request_latency` is a histogram in microseconds, exported as `_bucket`, `_sum`
and `_count` (prometheus_exporter.cc L69-L109). Replica, autoscaler and pod-state figures
come from kube-state-metrics, which kube-prometheus-stack installs.

Every SLO query measures prediction calls only. TF-Serving counts every REST call in
`request_count` (labels `model_name`, `status`; no API label: servables/tensorflow/util.cc
L66-L68, L117-L123) and, on success only, records `request_latency` with `API` = the call's
method (model_servers/http_server.cc L194-L201, ProcessRequest): `predict`, `classify` or
`regress` on REST (http_rest_api_handler.cc L85-L96), `Predict`, `Classify`, `Regress` on
gRPC (prediction_service_impl.cc L53, L92, L120), and empty for the status and metadata
GETs (L97-L104) that the kubelet's probes send every few seconds per pod. Counted naively,
those probes are fast successes that dilute the success rate and the latency. So:
- successful predictions: `request_latency_count{API=~PREDICTION_APIS}`;
- failed calls: `request_count{status!="OK"}`. It has no API label, but probes essentially
  never fail on a pod that serves: `Server::BuildAndStart` loads the models
  (`ServerCore::Create`, model_servers/server.cc L332) before it starts the HTTP server
  (`CreateAndStartHttpServer`, server.cc L446), and a failed initial load ends the process
  (main.cc L341-L346); so what fails is, in practice, prediction calls (and a client asking
  for a model or version that does not exist, which is a failure worth seeing).
- success rate = successful predictions / (successful predictions + failed calls).
(tensorflow/serving@9d981c5, cited as tensorflow_serving/<path>.)
"""

from __future__ import annotations

import json
from typing import Any

import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.model.workload import MODEL_LABEL, TRACK_LABEL, VERSION_LABEL, model_selector
from infra.platform.network import platform_labels
from infra.spec.manifest import ServedModel
from infra.spec.scaling import ScalingMetric
from infra.spec.settings import StackSettings
from infra.spec.shadow import LABEL_SHADOW

MONITORING_API = "monitoring.coreos.com/v1"
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY_BUCKET = ":tensorflow:serving:request_latency_bucket"
REQUEST_LATENCY_COUNT = ":tensorflow:serving:request_latency_count"
# The `API` label values of prediction calls (REST lower case, gRPC capitalised; see above).
PREDICTION_APIS = "predict|classify|regress|Predict|Classify|Regress"
PREDICTION_FILTER = f'API=~"{PREDICTION_APIS}"'
FAILED_FILTER = 'status!="OK"'
SCRAPE_INTERVAL = "30s"
ALERT_WINDOW = "5m"
# Waiting reasons of a container that will not start by itself (kubelet's own reason strings).
STUCK_REASONS = "CrashLoopBackOff|CreateContainerConfigError|ErrImagePull|ImagePullBackOff"
DASHBOARD_LABEL = "grafana_dashboard"  # what Grafana's dashboard sidecar watches for


def _prometheus_label(kubernetes_label: str) -> str:
    """How Prometheus' Kubernetes discovery spells a pod label: every non-alphanumeric is `_`."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in kubernetes_label)


def selectors(model: ServedModel, namespace: str) -> str:
    """The model's series that clients' calls made: a shadow's (docs/shadow.md) answer no client,
    so its mirrored calls stay out of the SLO alerts and the dashboard."""
    where = f'namespace="{namespace}", model_name="{model.name}"'
    return where + f', track!="{LABEL_SHADOW}"' if model.has_shadow else where


def _grouping(by: str) -> str:
    return f" by ({by})" if by else ""


def successful_predictions(where: str, window: str, by: str = "") -> str:
    """Rate of prediction calls that succeeded (probes excluded: they carry no prediction API)."""
    return f"sum{_grouping(by)} (rate({REQUEST_LATENCY_COUNT}{{{where}, {PREDICTION_FILTER}}}[{window}]))"


def failed_calls(where: str, window: str, by: str = "") -> str:
    """Rate of calls that failed (`request_count` has no API label; probes do not fail, see above)."""
    return f"sum{_grouping(by)} (rate({REQUEST_COUNT}{{{where}, {FAILED_FILTER}}}[{window}]))"


def _or_zero(present: str, other: str) -> str:
    # A series exists only once it has been incremented: with no failure yet (or no success
    # left) one side is empty, and `a + empty` is empty in PromQL. `or other * 0` fills a
    # zero for every group the other side has, so the ratio still has a value.
    return f"({present} or {other} * 0)"


def prediction_calls(where: str, window: str, by: str = "") -> str:
    """Rate of prediction calls, successful or failed."""
    ok, failed = successful_predictions(where, window, by), failed_calls(where, window, by)
    return f"({_or_zero(ok, failed)} + {_or_zero(failed, ok)})"


def success_ratio(where: str, window: str, by: str = "") -> str:
    """Successful predictions / (successful predictions + failed calls), 0 to 1."""
    ok, failed = successful_predictions(where, window, by), failed_calls(where, window, by)
    return f"{_or_zero(ok, failed)} / {prediction_calls(where, window, by)}"


def error_ratio(where: str, window: str, by: str = "") -> str:
    """Failed calls / (successful predictions + failed calls), 0 to 1."""
    ok, failed = successful_predictions(where, window, by), failed_calls(where, window, by)
    return f"{_or_zero(failed, ok)} / {prediction_calls(where, window, by)}"


def latency_quantile(quantile: float, where: str, window: str, by: str = "") -> str:
    """A quantile of the latency of successful prediction calls, in microseconds."""
    grouping = ", ".join(["le", *([by] if by else [])])
    return (
        f"histogram_quantile({quantile:g}, sum by ({grouping}) "
        f"(rate({REQUEST_LATENCY_BUCKET}{{{where}, {PREDICTION_FILTER}}}[{window}])))"
    )


def pod_name_pattern(model_name: str, shadow: bool = False) -> str:
    """A regex of the names of the model's pods, every track, with or without Flagger.

    Pods of a Deployment are `<deployment>-<pod-template-hash>-<suffix>`; our Deployments are
    Pulumi auto-named `<model>-deployment-<hex>` (`<model>-canary-deployment-<hex>` for a
    canary track, `<model>-shadow-deployment-<hex>` for a shadow; infra/model/component.py) and
    Flagger's clone is `<target>-primary` (fluxcd/flagger pkg/canary/deployment_controller.go L236).
    """
    tracks = "(-canary|-shadow)?" if shadow else "(-canary)?"
    return f"{model_name}{tracks}-deployment-[0-9a-f]+(-primary)?-[0-9a-z]+-[0-9a-z]+"


def _scrape(*pod_label_then_target: str) -> dict[str, Any]:
    """TF-Serving's Prometheus endpoint on the REST port; each (pod label, series label) pair
    copies a pod label onto every series scraped from the pod."""
    pairs = zip(pod_label_then_target[::2], pod_label_then_target[1::2], strict=True)
    return {
        "port": "http",
        "path": tfserving.PROMETHEUS_PATH,
        "interval": SCRAPE_INTERVAL,
        "relabelings": [{"sourceLabels": [_prometheus_label(pod)], "targetLabel": target} for pod, target in pairs],
    }


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
            "endpoints": [_scrape(VERSION_LABEL, "version", TRACK_LABEL, "track", MODEL_LABEL, "model")],
        },
    }


def alert_rules(model: ServedModel, namespace: str) -> list[dict[str, Any]]:
    """The alerts of one model; every expression names it (and its namespace)."""
    hpa = autoscaler_pattern(model.name, model.serving.autoscaling.metric)
    pods = pod_name_pattern(model.name, shadow=model.has_shadow)
    return alert_rules_of(model.name, namespace, pods, f"{model.name}(-primary)?", model, hpa)


def autoscaler_pattern(workload: str, metric: ScalingMetric) -> str:
    """A regex of the names of the stable track's HPA: ours, Pulumi auto-named `<workload>-hpa-<hex>`,
    or on requests the one KEDA creates for our ScaledObject `<workload>-scaler-<hex>`, named
    `keda-hpa-<scaledobject>` (kedacore/keda@v2.20.2 controllers/keda/hpa.go:401-402)."""
    return f"keda-hpa-{workload}-scaler-.+" if metric is ScalingMetric.requests else f"{workload}-hpa-.+"


def alert_rules_of(
    workload: str, namespace: str, pods_pattern: str, services: str, model: ServedModel, hpa: str
) -> list[dict[str, Any]]:
    """The alerts of the workload `workload` (a model's, or a pool's: its Services match `services`,
    its pods `pods_pattern`, its autoscaler's name `hpa`), with `model`'s SLO alerts on its own
    `model_name` series."""
    slo = model.serving.slo
    where = selectors(model, namespace)
    error_budget = round(1 - slo.availability, 6)
    latency_us = slo.latency_p99_ms * 1000
    labels = {"model": workload, "namespace": namespace}

    def alert(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": duration,
            "labels": labels | {"severity": severity},
            "annotations": {"summary": summary, "model": workload},
        }

    pods = f'namespace="{namespace}", pod=~"{pods_pattern}"'
    # Kubernetes' own reasons for a container that cannot start; kube-state-metrics exports the
    # current one, value 1, while the container waits (docs/metrics/workload/pod-metrics.md
    # L21, L45; internal/store/pod.go L564-L588), and the init container's `Error` exit
    # (pod-metrics.md L48). kubernetes/kube-state-metrics@c92fe0c (v2.20.0+11).
    stuck = f'{pods}, reason=~"{STUCK_REASONS}"'
    not_starting = (
        f"max by (pod) (max_over_time(kube_pod_container_status_waiting_reason{{{stuck}}}[{ALERT_WINDOW}]) "
        f"or max_over_time(kube_pod_init_container_status_waiting_reason{{{stuck}}}[{ALERT_WINDOW}]) "
        f'or max_over_time(kube_pod_init_container_status_terminated_reason{{{pods}, reason="Error"}}'
        f"[{ALERT_WINDOW}])) >= 1"
    )
    return [
        alert(
            "ModelNoReadyReplica",
            # Only ready pods are endpoints of the Service, so no `up` series means none is ready
            # (under Flagger the stable pods are the `-primary` Service's).
            f'absent(up{{namespace="{namespace}", service=~"{services}"}} == 1)',
            "5m",
            "critical",
            f"{workload}: no ready replica serves the stable version",
        ),
        alert(
            "ModelErrorRatioAboveSLO",
            f"{error_ratio(where, ALERT_WINDOW)} > {error_budget}",
            "10m",
            "critical",
            f"{model.name}: more than {error_budget:.2%} of prediction calls fail "
            f"(SLO availability {slo.availability})",
        ),
        alert(
            "ModelLatencyP99AboveSLO",
            f"{latency_quantile(0.99, where, ALERT_WINDOW)} > {latency_us:g}",
            "10m",
            "warning",
            f"{model.name}: p99 latency of prediction calls above {slo.latency_p99_ms:g} ms",
        ),
        alert(
            "ModelAutoscalerAtMax",
            f'kube_horizontalpodautoscaler_status_current_replicas{{namespace="{namespace}", '
            f'horizontalpodautoscaler=~"{hpa}"}} >= kube_horizontalpodautoscaler_spec_max_replicas'
            f'{{namespace="{namespace}", horizontalpodautoscaler=~"{hpa}"}}',
            "15m",
            "warning",
            f"{workload}: the autoscaler is pinned at its maximum; raise max_replicas or resources",
        ),
        alert(
            # A version that fails to load cannot be seen in TF-Serving's metrics: a failed initial
            # load ends the server before it exports any (server_core.cc L741-L763
            # ConnectSourcesWithFastInitialLoad -> load_servables_fast.cc L84-L118 UnknownError ->
            # main.cc L341-L346 "Failed to start server", return -1). What can be seen is the pod
            # that never starts: the server (or the fetcher of a missing or corrupt artifact)
            # restarting in CrashLoopBackOff, or an image or config that cannot be pulled or
            # mounted. `max_over_time` bridges the moments between restarts; 15m outlasts the
            # kubelet's restart back-off (capped at 5 minutes) so one slow start does not page.
            "ModelPodsNotStarting",
            not_starting,
            "15m",
            "critical",
            f"{workload}: pod {{{{ $labels.pod }}}} cannot start (crash loop, failed fetch or image pull)",
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
    """A Grafana dashboard (JSON model): prediction calls, their errors and latency quantiles, and
    replicas, per version."""
    return dashboard_of(
        f"model-serving-{model.name}"[:40],
        f"Model {model.name}",
        [model.name],
        selectors(model, namespace),
        "version",
        (
            f'count by (version, track) (up{{namespace="{namespace}", model="{model.name}"}} == 1)',
            "v{{version}} {{track}}",
        ),
    )


def dashboard_of(
    uid: str, title: str, tags: list[str], where: str, by: str, replicas: tuple[str, str]
) -> dict[str, Any]:
    """The dashboard of a model (series `by` version) or of a pool (by `model_name`)."""
    legend = f"{{{{{by}}}}}" if by != "version" else "v{{version}}"

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
        panel(1, "Requests per second", "reqps", [(prediction_calls(where, "5m", by=by), legend)]),
        panel(2, "Error ratio", "percentunit", [(error_ratio(where, "5m", by=by), legend)]),
        panel(
            3,
            "Latency",
            "µs",
            [(latency_quantile(q, where, "5m", by=by), f"p{int(q * 100)} {legend}") for q in (0.5, 0.9, 0.99)],
        ),
        panel(4, "Serving replicas", "short", [replicas]),
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["model-serving", *tags],
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


# Serving pools -------------------------------------------------------------------------------


def pool_pod_pattern(shard: str) -> str:
    """The names of a pool's pods (`<shard>-deployment-<hex>-<hash>-<suffix>`, Pulumi auto-named)."""
    return f"{shard}-deployment-[0-9a-f]+-[0-9a-z]+-[0-9a-z]+"


def pool_service_monitor(shard: str, pool_label: str, settings: StackSettings) -> dict[str, Any]:
    """Scrapes the pool's Service; every series keeps TF-Serving's `model_name` and gains `pool`."""
    return {
        "api_version": MONITORING_API,
        "kind": "ServiceMonitor",
        "metadata": _pool_metadata(shard, pool_label, settings),
        "spec": {
            "selector": {"matchLabels": {pool_label: shard}},
            "namespaceSelector": {"matchNames": [settings.namespace]},
            "endpoints": [_scrape(pool_label, "pool", TRACK_LABEL, "track")],
        },
    }


def pool_alert_rules(
    shard: str, members: list[ServedModel], namespace: str, metric: ScalingMetric = ScalingMetric.cpu
) -> list[dict[str, Any]]:
    """The pool's own alerts (no ready pod, autoscaler at max, pods not starting), then each
    member's SLO alerts on its own `model_name` series."""
    hpa = autoscaler_pattern(shard, metric)
    own_rules = alert_rules_of(shard, namespace, pool_pod_pattern(shard), shard, members[0], hpa)
    per_model = {rule["alert"]: rule for rule in own_rules}
    rules = [
        _relabel(per_model["ModelNoReadyReplica"], "PoolNoReadyReplica", shard),
        _relabel(per_model["ModelAutoscalerAtMax"], "PoolAutoscalerAtMax", shard),
        _relabel(per_model["ModelPodsNotStarting"], "PoolPodsNotStarting", shard),
    ]
    for member in members:
        own = {rule["alert"]: rule for rule in alert_rules(member, namespace)}
        rules += [own["ModelErrorRatioAboveSLO"], own["ModelLatencyP99AboveSLO"]]
    return rules


def _relabel(rule: dict[str, Any], name: str, shard: str) -> dict[str, Any]:
    labels = {k: v for k, v in rule["labels"].items() if k != "model"} | {"pool": shard}
    annotations = {"summary": f"pool {rule['annotations']['summary']}", "pool": shard}
    return rule | {"alert": name, "labels": labels, "annotations": annotations}


def pool_prometheus_rule(
    shard: str,
    pool_label: str,
    members: list[ServedModel],
    settings: StackSettings,
    metric: ScalingMetric = ScalingMetric.cpu,
) -> dict[str, Any]:
    rules = pool_alert_rules(shard, members, settings.namespace, metric)
    return {
        "api_version": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _pool_metadata(shard, pool_label, settings),
        "spec": {"groups": [{"name": f"model-serving.pool.{shard}", "rules": rules}]},
    }


def _pool_metadata(shard: str, pool_label: str, settings: StackSettings) -> k8s.meta.v1.ObjectMetaArgs:
    labels = dict(platform_labels()) | {pool_label: shard} | dict(settings.monitoring.selector_labels)
    return k8s.meta.v1.ObjectMetaArgs(namespace=settings.namespace, labels=labels)


def pool_dashboard_config_map(shard: str, pool_label: str, settings: StackSettings) -> dict[str, Any]:
    """One dashboard per pool: every member's calls, errors and latency by `model_name`, and the pool's pods."""
    namespace = settings.namespace
    board = dashboard_of(
        f"model-serving-pool-{shard}"[:40],
        f"Pool {shard}",
        [f"pool:{shard}"],
        f'namespace="{namespace}", pool="{shard}"',
        "model_name",
        (f'count by (track) (up{{namespace="{namespace}", pool="{shard}"}} == 1)', "{{track}}"),
    )
    labels = dict(platform_labels()) | {pool_label: shard, DASHBOARD_LABEL: "1"}
    return {
        "metadata": k8s.meta.v1.ObjectMetaArgs(
            namespace=settings.monitoring.dashboard_namespace or namespace, labels=labels
        ),
        "data": {f"pool-{shard}.json": json.dumps(board, indent=2)},
    }
