"""Monitoring and metric-gated rollouts: what the program declares for them, and that it makes sense."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest

from infra.model.observability import PREDICTION_FILTER, pod_name_pattern
from infra.model.pool import MEMBERS_ANNOTATION, POOL_LABEL
from infra.spec.settings import load_stack_settings
from policy.engines import generated_service_ports
from tests.conftest import MODEL_X_STACK, ROOT, STACKS, edit_yaml, serving_component, shard_of
from tests.promtool import counter, expr_case, run_rule_tests
from tests.test_program import DEPLOYMENT, HPA, SERVICE, children, extras, pod_spec, served

ALERTS = {
    "ModelNoReadyReplica",
    "ModelErrorRatioAboveSLO",
    "ModelLatencyP99AboveSLO",
    "ModelAutoscalerAtMax",
    "ModelPodsNotStarting",
}
# A pool's: its workload's own, then each member's SLO alerts on its own series.
POOL_ALERTS = ("PoolNoReadyReplica", "PoolAutoscalerAtMax", "PoolPodsNotStarting")
MEMBER_ALERTS = {"ModelErrorRatioAboveSLO", "ModelLatencyP99AboveSLO"}
# What Flagger substitutes in a MetricTemplate query before running it.
FLAGGER_VARIABLES = {"{{ namespace }}": "models", "{{ target }}": "iris-deployment-abc", "{{ interval }}": "1m"}


def pool_extras(run, model: str) -> dict:
    """The monitor and alerts of the pool shard serving a pooled model's stable version ({} when dedicated)."""
    pool = serving_component(run, model)
    if pool.name == model:
        return {}
    return {
        r.name.rsplit("-", 1)[1]: r
        for r in run.resources
        if r.parent == pool.urn and r.name in (f"{pool.name}-monitor", f"{pool.name}-alerts")
    }


def model_alerts(run, model: str) -> list[dict]:
    """The alert rules on a model's stable workload: its own, or its pool's that name it."""
    more = extras(run, model)
    if "alerts" in more:
        (group,) = more["alerts"].object["spec"]["groups"]
        return group["rules"]
    (group,) = pool_extras(run, model)["alerts"].object["spec"]["groups"]
    return [rule for rule in group["rules"] if rule["labels"].get("model") == model]


def monitored(stack: str) -> bool:
    return load_stack_settings(ROOT, stack).monitoring.prometheus_operator


def with_dashboards(stack: str) -> bool:
    return load_stack_settings(ROOT, stack).monitoring.grafana_dashboards


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_service_monitor_scrapes_the_models_services(runs, model, stack):
    settings = load_stack_settings(ROOT, stack)
    shard = shard_of(model, stack)
    more = extras(runs[stack], model)
    # A pooled model's own monitor scrapes its canary workload, when it has one.
    assert ("monitor" in more) == (shard is None or "canary" in served(model, stack)[0].version_labels)
    if "monitor" in more:
        monitor = more["monitor"].object["spec"]
        assert monitor["selector"] == {"matchLabels": {"model-serving.dev/model": model}}
        (endpoint,) = monitor["endpoints"]
        assert endpoint["port"] == "http" and endpoint["path"] == "/monitoring/prometheus/metrics"
        assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"version", "track", "model"}
    service = None if settings.flagger else children(runs[stack], model)[SERVICE].object
    if shard is None:
        if service is not None:
            assert service["metadata"]["labels"]["model-serving.dev/model"] == model
    else:
        # The pool's monitor scrapes its Service; TF-Serving's series keep `model_name`.
        pool = pool_extras(runs[stack], model)
        monitor = pool["monitor"].object["spec"]
        assert monitor["selector"] == {"matchLabels": {POOL_LABEL: shard.name}}
        (endpoint,) = monitor["endpoints"]
        assert endpoint["port"] == "http" and endpoint["path"] == "/monitoring/prometheus/metrics"
        assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"pool", "track"}
        assert service["metadata"]["labels"][POOL_LABEL] == shard.name
        more = more | pool
    for kind in ("monitor", "alerts"):
        labels = more[kind].object["metadata"]["labels"]
        assert settings.monitoring.selector_labels.items() <= labels.items()


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_every_alert_parses_as_promql_and_names_the_model(runs, model, stack):
    shard = shard_of(model, stack)
    if shard is None:
        (group,) = extras(runs[stack], model)["alerts"].object["spec"]["groups"]
        assert {rule["alert"] for rule in group["rules"]} == ALERTS
    else:
        (group,) = pool_extras(runs[stack], model)["alerts"].object["spec"]["groups"]
        assert [r["alert"] for r in group["rules"]] == [
            *POOL_ALERTS,
            *(alert for _ in shard.member_names for alert in ("ModelErrorRatioAboveSLO", "ModelLatencyP99AboveSLO")),
        ]
        for rule in group["rules"]:
            promql_parser.parse(rule["expr"])
            if rule["alert"] in POOL_ALERTS:
                assert shard.name in rule["expr"] and rule["labels"]["pool"] == shard.name
        assert {rule["alert"] for rule in model_alerts(runs[stack], model)} == MEMBER_ALERTS
    served_model, _ = served(model, stack)
    for rule in model_alerts(runs[stack], model):
        promql_parser.parse(rule["expr"])
        assert model in rule["expr"] and rule["labels"]["model"] == model
    rules = model_alerts(runs[stack], model)
    error_ratio = next(r for r in rules if r["alert"] == "ModelErrorRatioAboveSLO")
    assert error_ratio["expr"].endswith(f"> {round(1 - served_model.serving.slo.availability, 6)}")
    latency = next(r for r in rules if r["alert"] == "ModelLatencyP99AboveSLO")
    assert latency["expr"].endswith(f"> {served_model.serving.slo.latency_p99_ms * 1000:g}")


def test_promql_check_refuses_a_broken_expression():
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(x[5m]) >")


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if with_dashboards(s)])
def test_dashboard_loads_and_its_queries_parse(runs, model, stack):
    """A dedicated model's dashboard splits its series by version; a pooled model's is its pool's,
    one dashboard splitting every member's series by TF-Serving's `model_name`."""
    pool = shard_of(model, stack)
    shard = pool.name if pool is not None else None
    if shard is None:
        config_map = extras(runs[stack], model)["dashboard"].object
        by, legend = "version", "{{version}}"
    else:
        config_map = runs[stack].find("kubernetes:core/v1:ConfigMap", f"{shard}-dashboard").object
        by, legend = "model_name", "{{model_name}}"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert titles == {"Requests per second", "Error ratio", "Latency", "Serving replicas"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])
            if panel["title"] == "Serving replicas" and shard is not None:
                assert f'pool="{shard}"' in target["expr"]
            else:
                assert by in target["expr"] and legend in target["legendFormat"]
    latency = next(p for p in dashboard["panels"] if p["title"] == "Latency")
    assert [t["legendFormat"].split()[0] for t in latency["targets"]] == ["p50", "p90", "p99"]


FLAGGER_STACKS = [s for s in STACKS if load_stack_settings(ROOT, s).flagger]


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if s in FLAGGER_STACKS])
def test_flagger_canary_targets_the_deployment_and_its_metrics(runs, model, stack):
    settings = load_stack_settings(ROOT, stack)
    kids, more = children(runs[stack], model), extras(runs[stack], model)
    canary = more["rollout"].object["spec"]
    assert canary["provider"] == "gatewayapi:v1"
    assert canary["targetRef"]["name"] == kids[DEPLOYMENT].object["metadata"]["name"]
    assert canary["autoscalerRef"]["name"] == kids[HPA].object["metadata"]["name"]
    templates = {m["name"]: m["templateRef"]["name"] for m in canary["analysis"]["metrics"]}
    assert templates == {
        "success-rate": more["success-rate"].object["metadata"]["name"],
        "latency-p99": more["latency-p99"].object["metadata"]["name"],
    }
    for metric in ("success-rate", "latency-p99"):
        query = more[metric].object["spec"]["query"]
        promql_parser.parse(substitute_flagger_variables(query))
        assert more[metric].object["spec"]["provider"]["address"] == settings.progressive_delivery.prometheus_address
    served_model, _ = served(model, stack)
    rollout = served_model.serving.rollout
    defaults = settings.progressive_delivery
    analysis = canary["analysis"]
    assert analysis["stepWeight"] == ((rollout and rollout.step_weight) or defaults.step_weight)
    assert analysis["maxWeight"] == ((rollout and rollout.max_weight) or defaults.max_weight)
    thresholds = {m["name"]: m["thresholdRange"] for m in analysis["metrics"]}
    assert thresholds["success-rate"] == {"min": round(served_model.serving.slo.availability * 100, 4)}
    assert thresholds["latency-p99"] == {"max": served_model.serving.slo.latency_p99_ms}
    # The ServiceMonitor finds the primary and canary Services, not the apex (no double scrape).
    service = canary["service"]
    assert "apex" not in service
    assert service["primary"]["labels"] == service["canary"]["labels"] == {"model-serving.dev/model": model}
    # Flagger scales the target; Pulumi must not wait for replicas it removes.
    deployment = kids[DEPLOYMENT].object
    assert deployment["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if s not in FLAGGER_STACKS])
def test_without_flagger_pulumi_awaits_the_rollout(runs, model, stack):
    deployment = children(runs[stack], model)[DEPLOYMENT].object
    shard = shard_of(model, stack)
    if shard is None:
        assert "annotations" not in deployment["metadata"]
    else:
        # Pulumi awaits a pool's rollout too; the annotation records what each member adds.
        assert deployment["metadata"]["annotations"] == {
            MEMBERS_ANNOTATION: json.dumps(shard.member_memory(), sort_keys=True)
        }
    assert "rollout" not in extras(runs[stack], model)


def test_flagger_needs_gateway_routing(project, capsys):
    from scripts.modelctl.cli import main

    edit_yaml(
        project / "stacks" / "Pulumi.staging.yaml",
        lambda d: d["config"].update(
            {"model-serving:progressiveDelivery": {"flagger": True, "prometheusAddress": "http://prometheus:9090"}}
        ),
    )
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    assert "stacks/Pulumi.staging.yaml: config.model-serving:progressiveDelivery.flagger: " in err
    assert "needs routing.kind: gateway" in err


def test_a_manual_canary_on_a_flagger_stack_is_refused(project, capsys):
    from scripts.modelctl.cli import main

    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"canary": {"version": 3}}))
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    assert "models/iris.yaml: environments.prod.canary: stack prod rolls versions out with Flagger" in err


# --- Prediction calls only (issue 9, i) ---------------------------------------------------

TF_SERVING_SERIES = re.compile(
    r":tensorflow:serving:(request_count|request_latency_count|request_latency_bucket)\{([^}]*)\}"
)


def assert_measures_prediction_calls_only(query: str) -> None:
    """Latency and successes come from `request_latency` of prediction APIs; `request_count`
    only contributes failures (it has no API label, and probes succeed)."""
    selectors = TF_SERVING_SERIES.findall(query)
    assert selectors, query
    for metric, matchers in selectors:
        if metric == "request_count":
            assert 'status!="OK"' in matchers, query
        else:
            assert PREDICTION_FILTER in matchers, query


def slo_queries(run, model: str) -> dict[str, str]:
    """Every success-rate, error and latency query declared for a model: alerts, dashboard, Flagger."""
    more = extras(run, model)
    queries = {}
    if "alerts" in more or pool_extras(run, model):
        queries |= {
            r["alert"]: r["expr"]
            for r in model_alerts(run, model)
            if r["alert"] in ("ModelErrorRatioAboveSLO", "ModelLatencyP99AboveSLO")
        }
    if "dashboard" in more:
        (text,) = more["dashboard"].object["data"].values()
        for panel in json.loads(text)["panels"]:
            if panel["title"] != "Serving replicas":
                queries |= {f"{panel['title']} {t['refId']}": t["expr"] for t in panel["targets"]}
    for metric in ("success-rate", "latency-p99"):
        if metric in more:
            queries[metric] = substitute_flagger_variables(more[metric].object["spec"]["query"])
    return queries


def substitute_flagger_variables(query: str) -> str:
    for variable, substitute in FLAGGER_VARIABLES.items():
        query = query.replace(variable, substitute)
    return query


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_slo_queries_measure_prediction_calls_only(runs, model, stack):
    queries = slo_queries(runs[stack], model)
    # alerts, dashboard targets, templates
    # (A pooled model has no dashboard: see test_dashboard_loads_and_its_queries_parse.)
    dashboard = with_dashboards(stack) and shard_of(model, stack) is None
    expected = 2 + (5 if dashboard else 0) + (2 if stack in FLAGGER_STACKS else 0)
    assert len(queries) == expected, sorted(queries)
    for query in queries.values():
        assert_measures_prediction_calls_only(query)


def series(name: str, rate: float, **labels: str) -> tuple[dict[str, str], float]:
    return {"__name__": name, "namespace": "models", "model_name": "iris", **labels}, rate


CANARY_POD = "iris-deployment-abc-7d9f8b6c5d-x2x4z"
LATENCY_COUNT = ":tensorflow:serving:request_latency_count"
REQUEST_COUNT = ":tensorflow:serving:request_count"


def canary_traffic(predictions: float = 9.0, failures: float = 1.0, probes: float = 0.0) -> list:
    """What a canary pod exports, as rates: successful predictions (2/3 REST, 1/3 gRPC), failed
    calls, and the kubelet's probes (status and metadata GETs), which succeed with an empty
    API and add to the same `request_count{status="OK"}` series (http_server.cc ProcessRequest)."""
    exported = [
        series(LATENCY_COUNT, predictions * 2 / 3, API="predict", pod=CANARY_POD),
        series(LATENCY_COUNT, predictions / 3, API="Predict", pod=CANARY_POD),
        series(LATENCY_COUNT, probes, API="", pod=CANARY_POD),
        series(REQUEST_COUNT, predictions + probes, status="OK", pod=CANARY_POD),
        series(REQUEST_COUNT, failures, status="INVALID_ARGUMENT", pod=CANARY_POD),
    ]
    return [(labels, rate) for labels, rate in exported if rate]  # a counter never incremented is absent


# The primary's pods and another model's series: not the canary's analysis.
ELSEWHERE = [
    series(":tensorflow:serving:request_count", 5.0, status="UNAVAILABLE", pod="iris-deployment-abc-primary-5c-q1"),
    series(":tensorflow:serving:request_count", 5.0, status="INTERNAL", pod=CANARY_POD, model_name="x"),
]
# The success-rate query before issue 9: every REST call, probes included.
OLD_SUCCESS_RATE = (
    '100 * sum(rate(:tensorflow:serving:request_count{namespace="models", pod=~"iris-deployment-abc-[0-9a-zA-Z]+'
    '(-[0-9a-zA-Z]+)", model_name="iris", status="OK"}[1m])) / sum(rate(:tensorflow:serving:request_count'
    '{namespace="models", pod=~"iris-deployment-abc-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)", model_name="iris"}[1m]))'
)


def flagger_query(runs, metric: str) -> str:
    return substitute_flagger_variables(extras(runs["prod"], "iris")[metric].object["spec"]["query"])


def as_series(traffic: list, **labels: str) -> list[dict[str, str]]:
    """Synthetic rates as promtool's input series: counters growing at those rates."""
    return [
        counter(series_labels["__name__"], rate, {k: v for k, v in series_labels.items() if k != "__name__"} | labels)
        for series_labels, rate in traffic
    ]


def assert_answers(directory, expr: str, cases: list[tuple[list, float | None]], **labels: str) -> None:
    """Prometheus's answer to `expr` over each traffic: that one value, or nothing (None)."""
    for index, (traffic, expected) in enumerate(cases):
        samples = [] if expected is None else [({}, expected)]
        run_rule_tests(directory / str(index), as_series(traffic, **labels), [expr_case(expr, samples)])


def test_probe_traffic_does_not_change_the_success_rate(runs, tmp_path):
    success_rate = flagger_query(runs, "success-rate")
    assert_answers(
        tmp_path / "now",
        success_rate,
        [
            (canary_traffic() + ELSEWHERE, 90.0),
            (canary_traffic(probes=0.6) + ELSEWHERE, 90.0),
            (canary_traffic(probes=6.0), 90.0),
        ],
    )
    # The old formula counted the probes as successes: the same canary looked healthier.
    assert_answers(
        tmp_path / "old",
        OLD_SUCCESS_RATE,
        [
            (canary_traffic(), 90.0),
            (canary_traffic(probes=0.6), 100 * 9.6 / 10.6),
            (canary_traffic(probes=6.0), 100 * 15 / 16),
        ],
    )


def test_success_rate_has_a_value_without_failures_and_without_successes(runs, tmp_path):
    assert_answers(
        tmp_path,
        flagger_query(runs, "success-rate"),
        [
            # No failed call yet: the failure series does not exist, and the rate is still 100, not empty.
            (canary_traffic(failures=0, probes=0.6), 100.0),
            # Every prediction fails (a broken version): 0, so Flagger rolls back, not "no data".
            (canary_traffic(predictions=0, probes=0.6), 0.0),
            # No prediction at all: no value (Flagger then needs load, e.g. its load tester webhook).
            (canary_traffic(predictions=0, failures=0, probes=0.6), None),
        ],
    )


@pytest.mark.parametrize("stack", [s for s in STACKS if monitored(s)])
def test_error_ratio_alert_and_panel_ignore_probes(runs, stack, tmp_path):
    settings = load_stack_settings(ROOT, stack)
    expr = next(r["expr"] for r in model_alerts(runs[stack], "iris") if r["alert"] == "ModelErrorRatioAboveSLO")
    ratio = expr.rsplit(" > ", 1)[0]
    traffic = canary_traffic(probes=0.6)
    assert_answers(tmp_path / "alert", ratio, [(traffic, 0.1)], namespace=settings.namespace)
    if not with_dashboards(stack) or shard_of("iris", stack) is not None:
        assert "dashboard" not in extras(runs[stack], "iris")
        return
    (text,) = extras(runs[stack], "iris")["dashboard"].object["data"].values()
    panel = next(p for p in json.loads(text)["panels"] if p["title"] == "Error ratio")
    by_version = as_series(traffic, namespace=settings.namespace, version="2")
    run_rule_tests(tmp_path / "panel", by_version, [expr_case(panel["targets"][0]["expr"], [({"version": "2"}, 0.1)])])


# --- A pod that cannot start (issue 9, n) -------------------------------------------------


def test_pods_not_starting_alert_reads_kube_state_metrics_for_the_models_pods_only(runs):
    (group,) = extras(runs["prod"], "iris")["alerts"].object["spec"]["groups"]
    rule = next(r for r in group["rules"] if r["alert"] == "ModelPodsNotStarting")
    for metric in (
        "kube_pod_container_status_waiting_reason",
        "kube_pod_init_container_status_waiting_reason",
        "kube_pod_init_container_status_terminated_reason",
    ):
        assert metric in rule["expr"]
    assert "CrashLoopBackOff" in rule["expr"] and "ImagePullBackOff" in rule["expr"]
    pattern = pod_name_pattern("iris")
    assert f'pod=~"{pattern}"' in rule["expr"]
    # Pods are `<deployment>-<pod-template-hash>-<suffix>`; Deployments are Pulumi auto-named.
    for pod in (
        "iris-deployment-1a2b3c4d-7d9f8b6c5d-x2x4z",  # stable (no Flagger), or Flagger's target
        "iris-deployment-1a2b3c4d-primary-6b8d9c7f4-q7w2v",  # Flagger's primary
        "iris-canary-deployment-0f9e8d7c-5f6d7c8b9-abcde",  # a manual canary track
    ):
        assert re.fullmatch(pattern, pod), pod
    for pod in ("taxi-fare-deployment-1a2b3c4d-7d9f8b6c5d-x2x4z", "iris2-deployment-1a2b3c4d-7d9f8b6c5d-x2x4z"):
        assert not re.fullmatch(pattern, pod), pod


# --- gRPC through Flagger's Services (issue 9, h) -----------------------------------------


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if s in FLAGGER_STACKS])
def test_flagger_services_carry_grpc(runs, model, stack):
    service = extras(runs[stack], model)["rollout"].object["spec"]["service"]
    assert service["portDiscovery"] is True
    containers = pod_spec(runs[stack], model)["containers"]
    ports = generated_service_ports(service, containers)
    assert ports == {"http": (8501, "http"), "grpc": (8500, 8500)}


def test_flagger_port_emulation_follows_get_ports():
    containers = [
        {
            "name": "tfserving",
            "ports": [{"name": "grpc", "containerPort": 8500}, {"name": "http", "containerPort": 8501}],
        },
        {"name": "envoy", "ports": [{"name": "admin", "containerPort": 15000}]},
        {"name": "sidecar", "ports": [{"containerPort": 9000}]},
    ]
    service = {"port": 8501, "targetPort": "http", "portName": "http"}
    # Without discovery only `service.port`: the gRPC port is unreachable.
    assert generated_service_ports(service, containers) == {"http": (8501, "http")}
    assert generated_service_ports(service | {"portDiscovery": True}, containers) == {
        "http": (8501, "http"),
        "grpc": (8500, 8500),
        "tcp-sidecar-0": (9000, 9000),
    }
    # A numeric (or absent) targetPort excludes the container port by number.
    assert generated_service_ports({"port": 8501, "portDiscovery": True}, containers[:1]) == {
        "http": (8501, 8501),
        "grpc": (8500, 8500),
    }
