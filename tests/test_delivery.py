"""Monitoring and metric-gated rollouts: what the program declares for them, and that it makes sense."""

from __future__ import annotations

import json

import promql_parser
import pytest

from infra.spec.settings import load_stack_settings
from tests.conftest import MODEL_X_STACK, ROOT, STACKS, edit_yaml
from tests.test_program import DEPLOYMENT, HPA, SERVICE, children, extras, served

ALERTS = {
    "ModelNoReadyReplica",
    "ModelErrorRatioAboveSLO",
    "ModelLatencyP99AboveSLO",
    "ModelAutoscalerAtMax",
    "ModelVersionFailedToLoad",
}
# What Flagger substitutes in a MetricTemplate query before running it.
FLAGGER_VARIABLES = {"{{ namespace }}": "models", "{{ target }}": "iris-deployment-abc", "{{ interval }}": "1m"}


def monitored(stack: str) -> bool:
    return load_stack_settings(ROOT, stack).monitoring.prometheus_operator


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_service_monitor_scrapes_the_models_services(runs, model, stack):
    monitor = extras(runs[stack], model)["monitor"].object["spec"]
    assert monitor["selector"] == {"matchLabels": {"model-serving.dev/model": model}}
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/monitoring/prometheus/metrics"
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"version", "track", "model"}
    if not load_stack_settings(ROOT, stack).flagger:
        service = children(runs[stack], model)[SERVICE].object
        assert service["metadata"]["labels"]["model-serving.dev/model"] == model
    settings = load_stack_settings(ROOT, stack)
    for kind in ("monitor", "alerts"):
        labels = extras(runs[stack], model)[kind].object["metadata"]["labels"]
        assert settings.monitoring.selector_labels.items() <= labels.items()


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_every_alert_parses_as_promql_and_names_the_model(runs, model, stack):
    (group,) = extras(runs[stack], model)["alerts"].object["spec"]["groups"]
    assert {rule["alert"] for rule in group["rules"]} == ALERTS
    served_model, _ = served(model, stack)
    for rule in group["rules"]:
        promql_parser.parse(rule["expr"])
        assert model in rule["expr"] and rule["labels"]["model"] == model
    error_ratio = next(r for r in group["rules"] if r["alert"] == "ModelErrorRatioAboveSLO")
    assert error_ratio["expr"].endswith(f"> {round(1 - served_model.serving.slo.availability, 6)}")
    latency = next(r for r in group["rules"] if r["alert"] == "ModelLatencyP99AboveSLO")
    assert latency["expr"].endswith(f"> {served_model.serving.slo.latency_p99_ms * 1000:g}")


def test_promql_check_refuses_a_broken_expression():
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(x[5m]) >")


@pytest.mark.parametrize(("model", "stack"), [(m, s) for m, s in MODEL_X_STACK if monitored(s)])
def test_dashboard_loads_and_its_queries_parse(runs, model, stack):
    config_map = extras(runs[stack], model)["dashboard"].object
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert titles == {"Requests per second", "Error ratio", "Latency", "Serving replicas"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])
            assert "version" in target["expr"] and "{{version}}" in target["legendFormat"]
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
        for variable, value in FLAGGER_VARIABLES.items():
            query = query.replace(variable, value)
        promql_parser.parse(query)
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
    assert "annotations" not in deployment["metadata"]
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
