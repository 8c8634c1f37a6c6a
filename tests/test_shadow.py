"""Shadow traffic (issue 23, item 1): `environments.<env>.shadow` declares a workload of its own
serving another version, reached only by a RequestMirror filter on the model's routes; routes pass
the Gateway API CRDs and the engine checks (the mirror's Service resolves); bad input and stacks
that cannot mirror are refused by file and field."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest

from infra.offline import OfflineRun, run_stack
from infra.spec.errors import ConfigError
from infra.spec.manifest import load_manifests, served_in
from infra.spec.shadow import Shadow
from policy.rules import MANDATORY, references_resolve
from scripts.modelctl.cli import main
from scripts.modelctl.guardrails import as_policy_resource, check, stack_policy_settings
from tests.conftest import copy_project, edit_yaml
from tests.test_schemas import crd_validator

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
GRPC_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:GRPCRoute"
SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# dev: iris dedicated (stable 3, canary 2, REST and gRPC); local: iris in the `shared` pool.
STACKS = ("dev", "local")


def shadow_iris(document: dict) -> None:
    document["environments"]["dev"]["shadow"] = {"version": 1, "percent": 25}
    document["environments"]["local"]["shadow"] = {"version": 1}


@pytest.fixture(scope="module")
def shadow_project(tmp_path_factory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("shadow") / "project")
    edit_yaml(root / "models" / "iris.yaml", shadow_iris)
    return root


@pytest.fixture(scope="module")
def shadow_runs(shadow_project) -> dict[str, OfflineRun]:
    return {stack: run_stack(shadow_project, stack) for stack in STACKS}


def of_type(run: OfflineRun, type_: str) -> dict[str, dict]:
    return {r.name: r.object for r in run.resources if r.type == type_}


# Rendering -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_shadow_is_a_workload_of_its_own_serving_exactly_its_version(shadow_runs, stack):
    run = shadow_runs[stack]
    names = {r.name for r in run.resources if r.name.startswith("iris-shadow-")}
    assert names == {
        "iris-shadow-config",
        "iris-shadow-deployment",
        "iris-shadow-service",
        "iris-shadow-hpa",
        "iris-shadow-pdb",
    }
    deployment = of_type(run, DEPLOYMENT)["iris-shadow-deployment"]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["model-serving.dev/track"] == "shadow"
    assert pod["metadata"]["labels"]["model-serving.dev/version"] == "1"
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": "iris-shadow"}
    (fetcher,) = pod["spec"]["initContainers"]
    manifest = {m.name: m for m in load_manifests(Path(__file__).parent.parent)}["iris"]
    # The fetcher copies and verifies exactly the shadow's version.
    assert fetcher["args"] == [f"1={manifest.versions[1].digest}"]
    (server,) = pod["spec"]["containers"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v1/models/iris/versions/1/metadata"
    for container in (fetcher, server):
        context = container["securityContext"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
        assert not context["allowPrivilegeEscalation"] and context["capabilities"] == {"drop": ["ALL"]}
    config = of_type(run, "kubernetes:core/v1:ConfigMap")["iris-shadow-config"]["data"]["models.config"]
    assert re.search(r'key: "shadow"\s+value: 1', config) and "stable" not in config
    service = of_type(run, SERVICE)["iris-shadow-service"]
    assert service["metadata"]["name"] == "iris-shadow"
    assert service["spec"]["selector"] == {"app": "iris-shadow"}
    # The model's NetworkPolicy (every track: the model label) admits the gateway's proxies.
    policy = of_type(run, NETWORK_POLICY)["iris-netpol"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"model-serving.dev/model": "iris"}


@pytest.mark.parametrize("stack", STACKS)
def test_the_routes_mirror_to_the_shadow_and_send_it_no_client(shadow_runs, stack):
    run = shadow_runs[stack]
    percent = 25 if stack == "dev" else 10  # local takes the default
    for type_, name, port in ((HTTP_ROUTE, "iris-route", 8501), (GRPC_ROUTE, "iris-grpc-route", 8500)):
        (rule,) = of_type(run, type_)[name]["spec"]["rules"]
        assert rule["filters"] == [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": {"name": "iris-shadow", "port": port}, "percent": percent},
            }
        ]
        assert "iris-shadow" not in [ref["name"] for ref in rule["backendRefs"]]
    # taxi-fare has no shadow: no filter.
    (rule,) = of_type(run, HTTP_ROUTE)["taxi-fare-route"]["spec"]["rules"]
    assert "filters" not in rule


def test_a_pooled_models_shadow_runs_beside_the_pool(shadow_runs):
    run = shadow_runs["local"]
    (rule,) = of_type(run, HTTP_ROUTE)["iris-route"]["spec"]["rules"]
    assert [ref["name"] for ref in rule["backendRefs"]] == ["shared-0"]
    pool_config = of_type(run, "kubernetes:core/v1:ConfigMap")["shared-0-config"]["data"]["models.config"]
    assert '"shadow"' not in pool_config


def test_the_plan_counts_the_shadows_pods_as_the_models(shadow_runs):
    """The shadow's workload is counted with its own autoscaler, and belongs to the model's cost
    (docs/cost.md): dedicated (dev) and beside a pool (local)."""
    from scripts.modelctl.plan import capacity

    for stack in ("dev", "local"):
        counted = capacity(shadow_runs[stack])
        assert counted["iris-shadow"].model == "iris", stack
        assert counted["iris-shadow"].min_replicas >= 1 and counted["iris-shadow"].cpu > 0


def test_the_shadow_is_scraped_and_kept_out_of_the_models_slo_alerts(shadow_runs):
    run = shadow_runs["dev"]
    monitor = of_type(run, SERVICE_MONITOR)["iris-monitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == {"model-serving.dev/model": "iris"}
    (group,) = of_type(run, PROMETHEUS_RULE)["iris-alerts"]["spec"]["groups"]
    slo = [r for r in group["rules"] if r["alert"] in ("ModelErrorRatioAboveSLO", "ModelLatencyP99AboveSLO")]
    assert len(slo) == 2 and all('track!="shadow"' in r["expr"] for r in slo)
    (taxi,) = of_type(run, PROMETHEUS_RULE)["taxi-fare-alerts"]["spec"]["groups"]
    assert not any("track!=" in r["expr"] for r in taxi["rules"])


def test_a_model_without_shadow_renders_as_before(shadow_runs, runs):
    for stack in STACKS:
        before = {r.urn: r.object for r in runs[stack].resources if r.is_kubernetes_object}
        after = {r.urn: r.object for r in shadow_runs[stack].resources if r.is_kubernetes_object}
        changed = {urn.rsplit("::", 1)[1] for urn in before.keys() ^ after.keys()}
        changed |= {urn.rsplit("::", 1)[1] for urn in before.keys() & after.keys() if before[urn] != after[urn]}
        # A pooled model gets its own ServiceAccount, NetworkPolicy and ServiceMonitor for its shadow,
        # as for a canary.
        expected = r"iris-shadow-(config|deployment|service|hpa|pdb)|iris-(route|grpc-route|alerts|dashboard)"
        # Its pool's rule holds its SLO alerts, which leave the shadow out.
        expected += "|iris-(sa|netpol|monitor)|shared-0-alerts" if stack == "local" else ""
        assert all(re.fullmatch(expected, name) for name in changed), changed
        assert {"iris-shadow-deployment", "iris-route"} <= changed


def test_routes_with_a_mirror_pass_the_gateway_api_crds(shadow_runs):
    seen = set()
    for run in shadow_runs.values():
        for resource in run.kubernetes_objects():
            obj = resource.object
            if obj["kind"] in ("HTTPRoute", "GRPCRoute"):
                errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
                assert not errors, f"{resource.urn}: {errors[0].message} at {list(errors[0].path)}"
                if "filters" in obj["spec"]["rules"][0]:
                    seen.add(obj["kind"])
    assert seen == {"HTTPRoute", "GRPCRoute"}
    # The schema sees a misspelt mirror field.
    broken = copy.deepcopy(of_type(shadow_runs["dev"], HTTP_ROUTE)["iris-route"])
    broken["spec"]["rules"][0]["filters"][0]["requestMirror"]["percentage"] = 10
    assert list(crd_validator("gateway.networking.k8s.io/v1", "HTTPRoute").iter_errors(broken))


@pytest.mark.parametrize("stack", STACKS)
def test_the_stacks_with_a_shadow_pass_every_mandatory_policy(shadow_project, shadow_runs, stack):
    violations = check(shadow_runs[stack], stack_policy_settings(shadow_project, stack))
    assert [str(v) for v in violations if v.enforcement == MANDATORY] == []


def _mirror_changed(resources, change):
    out = []
    for resource in resources:
        if resource.name == "iris-route":
            props = copy.deepcopy(dict(resource.props))
            change(props["spec"]["rules"][0]["filters"][0]["requestMirror"]["backendRef"])
            resource = dataclasses.replace(resource, props=props)
        out.append(resource)
    return out


def test_the_mirrors_service_and_port_must_resolve(shadow_project, shadow_runs):
    settings = stack_policy_settings(shadow_project, "dev")
    resources = [as_policy_resource(r) for r in shadow_runs["dev"].resources]
    assert references_resolve(resources, settings) == []
    gone = [m for _, m in references_resolve(_mirror_changed(resources, lambda ref: ref.update(name="gone")), settings)]
    assert any("spec.rules.filters.requestMirror.backendRef names Service models-dev/gone" in m for m in gone), gone
    wrong_port = _mirror_changed(resources, lambda ref: ref.update(port=9999))
    found = [str(v) for v in check_resources(wrong_port, settings)]
    assert any("spec.rules.filters.requestMirror.backendRef:" in m and "has no port 9999" in m for m in found), found


def check_resources(resources, settings):
    from policy.rules import evaluate

    return [v for v in evaluate(resources, settings) if v.enforcement == MANDATORY]


# Bad input -------------------------------------------------------------------------------------


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_manifests(root)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("shadow", "expected"),
    [
        ({"version": 3}, "environments.dev.shadow.version: Got 3, the stable version too"),
        ({"version": 2}, "environments.dev.shadow.version: Got 2, the canary's version too"),
        ({"version": 7}, "environments.dev.shadow.version: Got 7; published versions are 1, 2, 3"),
        ({"version": 1, "percent": 0}, "environments.dev.shadow.percent: Input should be greater than or equal to 1"),
        ({"version": 1, "percent": 101}, "environments.dev.shadow.percent: Input should be less than or equal to 100"),
        ({"version": 1, "mirror": 5}, "environments.dev.shadow.mirror: unknown field"),
        (
            {"version": 1, "verdict": {"min_requests": 0}},
            "environments.dev.shadow.verdict.min_requests: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_shadow_is_refused_by_file_and_field(project, shadow, expected):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["dev"].update(shadow=shadow))
    assert any(e.startswith(f"models/iris.yaml: {expected}") for e in errors_of(project)), errors_of(project)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ("prod", "environments.prod.shadow: stack prod rolls versions out with Flagger, which rewrites the whole"),
        ("staging", "environments.staging.shadow: stack staging routes by Ingress, which has no portable request"),
    ],
)
def test_a_shadow_on_a_stack_that_cannot_mirror_is_refused(project, capsys, environment, expected):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"][environment].update(shadow={"version": 1}))
    assert main(["--root", str(project), "validate"]) == 1
    captured = capsys.readouterr()
    assert f"models/iris.yaml: {expected}" in captured.err + captured.out
    assert "Traceback" not in captured.err


def test_a_model_named_like_a_shadow_service_is_refused(project):
    def rename(document):
        document["name"] = "iris-shadow"

    path = project / "models" / "iris.yaml"
    edit_yaml(path, rename)
    path.rename(project / "models" / "iris-shadow.yaml")
    assert any("names ending in '-shadow' are taken" in e for e in errors_of(project))


def test_status_and_the_catalog_show_the_shadow(shadow_project, capsys, tmp_path):
    """Which version shadows which environment, and how much of its traffic is copied to it."""
    import json

    from scripts.modelctl.cli import main

    assert main(["--root", str(shadow_project), "status", "--format", "json"]) == 0
    iris = next(m for m in json.loads(capsys.readouterr().out)["models"] if m["name"] == "iris")
    shadows = {env["environment"]: env["shadow"] for env in iris["environments"]}
    assert shadows["dev"] == {"version": 1, "percent": 25} and shadows["local"] == {"version": 1, "percent": 10}
    assert shadows["prod"] is None
    assert main(["--root", str(shadow_project), "status", "--stack", "dev"]) == 0
    text = capsys.readouterr().out
    assert "shadow (mirrored)" in text and "1 (25%)" in text
    out = tmp_path / "catalog"
    assert main(["--root", str(shadow_project), "catalog", "--out", str(out)]) == 0
    capsys.readouterr()
    page = (out / "models" / "iris.html").read_text()
    assert '<th scope="col">Shadow</th>' in page and "<td>1 (25% mirrored)</td>" in page
    assert "dev: v3 + canary v2 (10%) + shadow v1 (25% mirrored)" in (out / "index.html").read_text()


def test_status_live_does_not_expect_the_shadow_through_the_route():
    from scripts.modelctl.shelf import compare_loaded

    manifests = load_manifests(Path(__file__).parent.parent)
    iris = next(m for m in manifests if m.name == "iris")
    environments = dict(iris.environments)
    environments["dev"] = environments["dev"].model_copy(update={"shadow": Shadow(version=1)})
    (served,) = [m for m in served_in([iris.model_copy(update={"environments": environments})], "dev")]
    # dev: stable 3, canary 2, shadow 1; one status request reaches the stable workload.
    status = compare_loaded(served, "https://host/v1/models/iris", {3: "AVAILABLE"})
    assert status.differences == ()
    assert status.notes[0] == "version 1 (shadow) not seen: a shadow answers no client through the route"
    assert "version 2 (canary) not seen" in status.notes[1]
    # The stable's version still must be there.
    status = compare_loaded(served, "https://host/v1/models/iris", {})
    assert status.differences == (
        "version 2 (canary) is declared but not loaded",
        "version 3 (stable) is declared but not loaded",
    )


def test_a_failing_shadow_pages_nobody_but_its_pods_are_watched(shadow_runs, tmp_path):
    """On Prometheus's engine: the dev stack's iris error-ratio alert fires on the stable's failures
    and stays quiet while only the shadow fails every call; the pods-not-starting alert covers the
    shadow's pods; a pooled iris's SLO alerts (in its pool's rule) leave the shadow out too."""
    from tests.promtool import alert_case, counter, run_rule_tests

    (group,) = of_type(shadow_runs["dev"], PROMETHEUS_RULE)["iris-alerts"]["spec"]["groups"]
    rule = next(r for r in group["rules"] if r["alert"] == "ModelErrorRatioAboveSLO")
    stuck = next(r for r in group["rules"] if r["alert"] == "ModelPodsNotStarting")
    assert "(-canary|-shadow)?-deployment-" in stuck["expr"]

    def calls(track: str, predictions: float, failures: float) -> list[dict[str, str]]:
        labels = {"namespace": "models-dev", "model_name": "iris", "track": track}
        series = [counter(":tensorflow:serving:request_count", failures, labels | {"status": "INTERNAL"})]
        if predictions:
            series.append(
                counter(":tensorflow:serving:request_latency_count", predictions, labels | {"API": "predict"})
            )
        return series

    cases = [
        ("shadow-failing", calls("stable", 10.0, 0.0)[1:] + calls("shadow", 0.0, 5.0), False),
        ("stable-failing", calls("stable", 5.0, 5.0) + calls("shadow", 10.0, 0.0)[1:], True),
    ]
    for name, series, firing in cases:
        run_rule_tests(tmp_path / name, series, alerts=[alert_case(rule, firing)], groups=[group])
    (pool_group,) = of_type(shadow_runs["local"], PROMETHEUS_RULE)["shared-0-alerts"]["spec"]["groups"]
    iris_slo = [r for r in pool_group["rules"] if r["alert"] == "ModelErrorRatioAboveSLO" and '"iris"' in r["expr"]]
    assert iris_slo and all('track!="shadow"' in r["expr"] for r in iris_slo)


def test_a_mirror_target_that_takes_client_traffic_or_a_redirecting_mirror_is_refused(shadow_project, shadow_runs):
    from policy.rules import evaluate

    settings = stack_policy_settings(shadow_project, "dev")
    resources = [as_policy_resource(r) for r in shadow_runs["dev"].resources]

    def found(objects):
        return [v for v in evaluate(objects, settings) if v.rule == "mirrors-take-no-client-traffic"]

    assert found(resources) == []

    def changed(change):
        out = []
        for resource in resources:
            if resource.name == "iris-route":
                props = copy.deepcopy(dict(resource.props))
                change(props["spec"]["rules"][0])
                resource = dataclasses.replace(resource, props=props)
            out.append(resource)
        return out

    routed = changed(lambda rule: rule["backendRefs"].append({"name": "iris-shadow", "port": 8501, "weight": 1}))
    # Both of iris's routes mirror to a Service the REST route now also sends clients to.
    violations = found(routed)
    assert sorted(v.resource.name for v in violations) == ["iris-grpc-route", "iris-route"]
    for violation in violations:
        assert violation.enforcement == MANDATORY
        assert violation.message.startswith("mirrors to Service iris-shadow, which a route also sends client requests")
    redirect = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}
    (violation,) = found(changed(lambda rule: rule["filters"].append(redirect)))
    assert "Envoy Gateway refuses the rule (IncompatibleFilters" in violation.message
