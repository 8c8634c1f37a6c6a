"""Every rule the program declares, on Prometheus's own engine (promtool, tests/promtool.py): each
stack's PrometheusRules pass `promtool check rules`, and the model and pool alerts fire, or stay
quiet, on synthetic series named as TF-Serving exports them (`:tensorflow:serving:*`,
tensorflow_serving/model_servers/http_server.cc and util/prometheus_exporter.cc) and as
kube-state-metrics and Prometheus itself do (`up`)."""

from __future__ import annotations

import json

import pytest

from infra.spec.settings import load_stack_settings
from tests.conftest import ROOT, STACKS, shard_of
from tests.promtool import alert_case, check_rules, counter, expr_case, gauge, run_rule_tests
from tests.test_delivery import (
    LATENCY_COUNT,
    REQUEST_COUNT,
    as_series,
    canary_traffic,
    extras,
    model_alerts,
    monitored,
    pool_extras,
    substitute_flagger_variables,
)

PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
MONITORED = [stack for stack in STACKS if monitored(stack)]
LATENCY_BUCKET = ":tensorflow:serving:request_latency_bucket"


@pytest.mark.parametrize("stack", MONITORED)
def test_every_rule_passes_promtool_check(runs, stack, tmp_path):
    rules = [r for r in runs[stack].resources if r.type == PROMETHEUS_RULE]
    assert rules
    for index, rule in enumerate(rules):
        output = check_rules(tmp_path / str(index), rule.object["spec"]["groups"])
        assert "SUCCESS" in output


def the_alerts_group(run, model: str) -> dict:
    """The PrometheusRule group holding `model`'s SLO alerts: its own, or its pool shard's."""
    more = extras(run, model) if "alerts" in extras(run, model) else pool_extras(run, model)
    (group,) = more["alerts"].object["spec"]["groups"]
    return group


def model_rule(run, model: str, alert: str) -> dict:
    return next(r for r in model_alerts(run, model) if r["alert"] == alert)


@pytest.mark.parametrize("stack", MONITORED)
def test_the_error_ratio_alert_fires_on_failing_predictions_only(runs, stack, tmp_path):
    """Fires when failed calls exceed the SLO's error budget; quiet under it, on probe traffic
    alone (the kubelet's GETs succeed on `request_count` with no prediction) and with no series."""
    run = runs[stack]
    namespace = load_stack_settings(ROOT, stack).namespace
    group = the_alerts_group(run, "iris")
    rule = model_rule(run, "iris", "ModelErrorRatioAboveSLO")
    cases = [
        ("all-failing", canary_traffic(predictions=0, failures=1.0), True),
        ("ten-percent", canary_traffic(predictions=9.0, failures=1.0, probes=0.6), True),
        ("within-budget", canary_traffic(predictions=999.0, failures=1.0, probes=6.0), False),
        ("probes-only", canary_traffic(predictions=0, failures=0, probes=6.0), False),
        ("absent", [], False),
        # Another model's failures are not this one's.
        ("another-model", [(dict(s, model_name="x"), r) for s, r in canary_traffic(predictions=0)], False),
    ]
    for name, traffic, firing in cases:
        run_rule_tests(
            tmp_path / name, as_series(traffic, namespace=namespace), alerts=[alert_case(rule, firing)], groups=[group]
        )


def latency_histogram(bucket_rates: dict[str, float], namespace: str, model: str = "iris") -> list[dict[str, str]]:
    """TF-Serving's request latency histogram (microseconds) of REST predictions, cumulative
    per `le`, with the matching `_count`."""
    labels = {"namespace": namespace, "model_name": model, "API": "predict"}
    series = [counter(LATENCY_BUCKET, rate, labels | {"le": le}) for le, rate in bucket_rates.items()]
    return [*series, counter(LATENCY_COUNT, bucket_rates["+Inf"], labels)]


@pytest.mark.parametrize("stack", MONITORED)
def test_the_latency_alert_fires_above_the_slo(runs, stack, tmp_path):
    run = runs[stack]
    namespace = load_stack_settings(ROOT, stack).namespace
    group = the_alerts_group(run, "iris")
    rule = model_rule(run, "iris", "ModelLatencyP99AboveSLO")
    slo_us = 100_000  # models/iris.yaml: latency_p99_ms 100
    fast = {str(slo_us // 2): 10.0, str(slo_us * 2): 10.0, "+Inf": 10.0}
    slow = {str(slo_us // 2): 0.0, str(slo_us * 2): 10.0, "+Inf": 10.0}
    for name, buckets, firing in (("fast", fast, False), ("slow", slow, True), ("absent", {"+Inf": 0.0}, False)):
        run_rule_tests(
            tmp_path / name, latency_histogram(buckets, namespace), alerts=[alert_case(rule, firing)], groups=[group]
        )


@pytest.mark.parametrize("stack", [s for s in MONITORED if shard_of("iris", s) is None])
def test_no_ready_replica_fires_when_no_target_is_up(runs, stack, tmp_path):
    run = runs[stack]
    namespace = load_stack_settings(ROOT, stack).namespace
    group = the_alerts_group(run, "iris")
    rule = next(r for r in group["rules"] if r["alert"] == "ModelNoReadyReplica")
    up = {"namespace": namespace, "service": "iris", "job": "iris"}
    cases = [("up", [gauge("up", 1, up)], False), ("down", [gauge("up", 0, up)], True), ("absent", [], True)]
    for name, series, firing in cases:
        run_rule_tests(tmp_path / name, series, alerts=[alert_case(rule, firing, namespace=namespace)], groups=[group])


@pytest.mark.parametrize("stack", [s for s in MONITORED if shard_of("iris", s) is not None])
def test_a_pool_alerts_per_member_and_for_its_shard(runs, stack, tmp_path):
    """In a pool, each member's error alert reads its own `model_name` only; the shard's
    no-ready-replica alert reads the shard Service's `up`."""
    run = runs[stack]
    namespace = load_stack_settings(ROOT, stack).namespace
    shard = shard_of("iris", stack)
    group = the_alerts_group(run, "iris")
    others = [m for m in shard.member_names if m != "iris"]
    failing = as_series(canary_traffic(predictions=0, failures=1.0), namespace=namespace)
    alerts = [alert_case(model_rule(run, "iris", "ModelErrorRatioAboveSLO"), True)]
    run_rule_tests(tmp_path / "member", failing, alerts=alerts, groups=[group])
    if others:
        # A co-tenant serving well at the same time: its alert stays quiet, iris's fires alone.
        healthy = as_series(
            [(dict(s, model_name=others[0]), r) for s, r in canary_traffic(failures=0)], namespace=namespace
        )
        run_rule_tests(tmp_path / "co-tenant", failing + healthy, alerts=alerts, groups=[group])
    pool_rule = next(r for r in group["rules"] if r["alert"] == "PoolNoReadyReplica")
    up = {"namespace": namespace, "service": shard.name, "job": shard.name}
    for name, series, firing in (("up", [gauge("up", 1, up)], False), ("absent", [], True)):
        run_rule_tests(
            tmp_path / f"pool-{name}",
            series,
            alerts=[alert_case(pool_rule, firing, namespace=namespace)],
            groups=[group],
        )


def test_a_wrong_expectation_fails(tmp_path):
    """The cases above would catch a wrong query: promtool refuses a value off by more than the
    tolerance, a sample where none is expected, and none where one is."""
    series = [counter(REQUEST_COUNT, 1.0, {"status": "OK"})]
    query = f"sum(rate({REQUEST_COUNT}[1m]))"
    run_rule_tests(tmp_path / "right", series, [expr_case(query, [({}, 1.0)])])
    for name, samples in (("value", [({}, 1.001)]), ("none", []), ("labels", [({"status": "OK"}, 1.0)])):
        with pytest.raises(AssertionError, match="promtool test rules"):
            run_rule_tests(tmp_path / name, series, [expr_case(query, samples)])
    with pytest.raises(AssertionError, match="promtool test rules"):
        run_rule_tests(tmp_path / "missing", [], [expr_case(query, [({}, 1.0)])])


METRIC_TEMPLATE = "kubernetes:flagger.app/v1beta1:MetricTemplate"


def written_queries(run) -> list[str]:
    """The queries of the stack that are not rules: Flagger MetricTemplates (with Flagger's
    variables substituted, as Flagger runs them) and the Grafana dashboards' panel targets."""
    queries = []
    for resource in run.resources:
        if resource.type == METRIC_TEMPLATE:
            queries.append(substitute_flagger_variables(resource.object["spec"]["query"]))
        elif resource.type == "kubernetes:core/v1:ConfigMap" and "dashboard" in resource.name:
            for text in resource.object["data"].values():
                for panel in json.loads(text)["panels"]:
                    queries += [target["expr"] for target in panel.get("targets", [])]
    return queries


@pytest.mark.parametrize("stack", MONITORED)
def test_every_template_and_panel_query_passes_promtool_check(runs, stack, tmp_path):
    """Each as a recording rule: promtool parses and checks its expression as Prometheus would."""
    queries = written_queries(runs[stack])
    if stack in ("eks", "kind-flagger"):
        assert any("{{" not in q and ":tensorflow:serving:" in q for q in queries)
    rules = [{"record": f"query_{index}", "expr": query} for index, query in enumerate(queries)]
    if rules:
        check_rules(tmp_path, [{"name": "queries", "rules": rules}])
