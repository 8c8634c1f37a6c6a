"""Autoscaling on requests (issue 23, item 3): `autoscaling.metric: requests` declares a KEDA
ScaledObject with a Prometheus trigger instead of an HPA, for a model and for a serving pool; Flagger
copies it for the primary; the plan, the policies and the engine emulation read it; the trigger's
query counts prediction calls on Prometheus's own engine; bad input is refused by file and field."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest

from infra.model import keda as keda_builders
from infra.offline import OfflineRun, run_stack
from infra.spec.errors import ConfigError
from infra.spec.manifest import load_manifests
from infra.spec.project import validate_project
from infra.spec.settings import load_stack_settings
from policy.engines import Resource, flagger_outcome, pod_templates
from policy.rules import MANDATORY, references_resolve
from scripts.modelctl.cli import main
from scripts.modelctl.guardrails import as_policy_resource, check, stack_policy_settings
from scripts.modelctl.plan import capacity
from tests.conftest import copy_project, edit_yaml
from tests.promtool import check_rules, counter, expr_case, run_rule_tests
from tests.test_schemas import crd_validator

SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CANARY = "kubernetes:flagger.app/v1beta1:Canary"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
PROMETHEUS = "http://kube-prometheus-stack-prometheus.monitoring:9090"
# dev: iris dedicated with a canary; prod: Flagger and production; local: the `shared` pool.
STACKS = ("dev", "prod", "local")
LATENCY_COUNT = ":tensorflow:serving:request_latency_count"
REQUEST_COUNT = ":tensorflow:serving:request_count"


def scale_iris_on_requests(document: dict) -> None:
    document["serving"]["autoscaling"] = {
        "min_replicas": 1,
        "max_replicas": 4,
        "metric": "requests",
        "target_requests_per_second": 20,
    }


def name_the_prometheus(document: dict) -> None:
    config = document["config"]
    config["model-serving:monitoring"]["prometheusAddress"] = PROMETHEUS
    config.setdefault("model-serving:addons", {})["keda"] = True


def scale_the_pool_on_requests(document: dict) -> None:
    (pool,) = document["config"]["model-serving:servingPools"]["pools"]
    pool["autoscaling"].update(metric="requests", targetRequestsPerSecond=50)


@pytest.fixture(scope="module")
def requests_project(tmp_path_factory) -> Path:
    """The repository with iris on requests, and the local stack's pool too."""
    root = copy_project(tmp_path_factory.mktemp("keda") / "project")
    edit_yaml(root / "models" / "iris.yaml", scale_iris_on_requests)
    for stack in STACKS:
        edit_yaml(root / "stacks" / f"Pulumi.{stack}.yaml", name_the_prometheus)
    edit_yaml(root / "stacks" / "Pulumi.local.yaml", scale_the_pool_on_requests)
    return root


@pytest.fixture(scope="module")
def requests_runs(requests_project) -> dict[str, OfflineRun]:
    return {stack: run_stack(requests_project, stack) for stack in STACKS}


def of_type(run: OfflineRun, type_: str) -> dict[str, dict]:
    return {r.name: r.object for r in run.resources if r.type == type_}


def targets(run: OfflineRun, type_: str) -> set[str]:
    return {obj["spec"]["scaleTargetRef"]["name"] for obj in of_type(run, type_).values()}


# Rendering -------------------------------------------------------------------------------------


def test_a_model_on_requests_gets_a_scaled_object_per_track_and_no_hpa(requests_runs):
    run = requests_runs["dev"]
    deployments = of_type(run, DEPLOYMENT)
    scalers = of_type(run, SCALED_OBJECT)
    assert set(scalers) == {"iris-scaler", "iris-canary-scaler"}
    for track in ("iris", "iris-canary"):
        spec = scalers[f"{track}-scaler"]["spec"]
        deployment = deployments[f"{track}-deployment"]["metadata"]["name"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["name"] == "requests"
        metadata = trigger["metadata"]
        assert metadata["serverAddress"] == PROMETHEUS
        assert (metadata["threshold"], metadata["activationThreshold"]) == ("20", "0")
        assert f'pod=~"{deployment}-[0-9a-z]+-[0-9a-z]+"' in metadata["query"]
        assert 'model_name="iris"' in metadata["query"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
        # No HPA of ours on an iris workload: KEDA's webhook would refuse the ScaledObject.
        assert deployment not in targets(run, HPA)
    # taxi-fare still scales on CPU.
    assert {name for name in of_type(run, HPA)} == {"taxi-fare-hpa", "taxi-fare-canary-hpa"}


def test_a_cpu_model_renders_exactly_as_before(requests_runs, runs):
    """taxi-fare (cpu) is byte for byte what the repository renders; iris differs only by its
    autoscaler and the alert naming it."""
    for stack in STACKS:
        before = {r.urn: r.object for r in runs[stack].resources if r.is_kubernetes_object}
        after = {r.urn: r.object for r in requests_runs[stack].resources if r.is_kubernetes_object}
        for urn, obj in before.items():
            if "taxi-fare" in urn.rsplit("::", 1)[1]:
                assert json.dumps(after[urn], sort_keys=True) == json.dumps(obj, sort_keys=True), urn
        changed = {urn.rsplit("::", 1)[1] for urn in before.keys() ^ after.keys()}
        changed |= {urn.rsplit("::", 1)[1] for urn in before.keys() & after.keys() if before[urn] != after[urn]}
        assert all(re.fullmatch(r"(iris|shared-0)(-canary)?-(hpa|scaler|alerts|rollout)", n) for n in changed), changed
    hpa = of_type(runs["dev"], HPA)["iris-hpa"]["spec"]
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)


def test_every_scaled_object_and_canary_passes_its_crd_schema(requests_runs):
    seen = set()
    for run in requests_runs.values():
        for resource in run.kubernetes_objects():
            obj = resource.object
            if obj["kind"] in ("ScaledObject", "Canary"):
                errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
                assert not errors, f"{resource.urn}: {errors[0].message} at {list(errors[0].path)}"
                seen.add(obj["kind"])
    assert seen == {"ScaledObject", "Canary"}
    # The schema check would see a misspelt field.
    broken = copy.deepcopy(of_type(requests_runs["dev"], SCALED_OBJECT)["iris-scaler"])
    broken["spec"]["minReplicas"] = 1
    assert list(crd_validator("keda.sh/v1alpha1", "ScaledObject").iter_errors(broken))


def test_a_pool_on_requests_scales_on_every_members_calls(requests_runs):
    run = requests_runs["local"]
    scalers = of_type(run, SCALED_OBJECT)
    deployment = of_type(run, DEPLOYMENT)["shared-0-deployment"]["metadata"]["name"]
    spec = scalers["shared-0-scaler"]["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment
    assert spec["triggers"][0]["metadata"]["threshold"] == "50"
    assert "model_name" not in spec["triggers"][0]["metadata"]["query"]
    assert deployment not in targets(run, HPA)
    (group,) = of_type(run, PROMETHEUS_RULE)["shared-0-alerts"]["spec"]["groups"]
    at_max = next(r for r in group["rules"] if r["alert"] == "PoolAutoscalerAtMax")
    assert 'horizontalpodautoscaler=~"keda-hpa-shared-0-scaler-.+"' in at_max["expr"]


def test_keda_is_a_pinned_release_the_scaled_objects_wait_for(requests_runs, runs):
    run = requests_runs["dev"]
    (release,) = [r for r in run.resources if r.type == RELEASE and r.inputs["chart"] == "keda"]
    assert release.inputs["version"] == "2.20.2"
    assert release.inputs["repositoryOpts"]["repo"] == "https://kedacore.github.io/charts"
    scaler = run.find(SCALED_OBJECT, "iris-scaler")
    assert release.urn in scaler.dependencies
    # Only where the stack asks for it.
    assert not [r for r in runs["dev"].resources if r.type == RELEASE and r.inputs["chart"] == "keda"]


# Flagger -------------------------------------------------------------------------------------------


def test_flaggers_canary_refers_to_the_scaled_object_and_its_primary_copy_counts_the_primary(requests_runs):
    run = requests_runs["prod"]
    scaler = of_type(run, SCALED_OBJECT)["iris-scaler"]
    deployment = of_type(run, DEPLOYMENT)["iris-deployment"]["metadata"]["name"]
    ref = of_type(run, CANARY)["iris-rollout"]["spec"]["autoscalerRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "keda.sh/v1alpha1",
        "ScaledObject",
        scaler["metadata"]["name"],
    )
    assert f'pod=~"{deployment}-primary-[0-9a-z]+-[0-9a-z]+"' in ref["primaryScalerQueries"]["requests"]
    assert of_type(run, CANARY)["taxi-fare-rollout"]["spec"]["autoscalerRef"]["kind"] == "HorizontalPodAutoscaler"
    # The emulated primary keeps the ScaledObject's minimum (prod: iris min 2).
    resources = [as_policy_resource(r) for r in run.resources]
    primary = next(r for r in flagger_outcome(resources).generated if r.name == f"{deployment}-primary")
    assert primary.spec["replicas"] == scaler["spec"]["minReplicaCount"] == 2


# Capacity, policies, engine emulation --------------------------------------------------------------


def test_capacity_comes_from_the_scaled_object(requests_project, requests_runs):
    dev = capacity(requests_runs["dev"])
    assert (dev["iris"].min_replicas, dev["iris"].max_replicas) == (1, 4)
    prod = capacity(requests_runs["prod"])
    assert (prod["iris"].min_replicas, prod["iris"].max_replicas) == (2, 6)
    local = capacity(requests_runs["local"])
    (pool,) = load_stack_settings(requests_project, "local").serving_pools.pools
    pool_spec = of_type(requests_runs["local"], SCALED_OBJECT)["shared-0-scaler"]["spec"]
    bounds = (pool.autoscaling.min_replicas, pool.autoscaling.max_replicas)
    assert (local["shared-0"].min_replicas, local["shared-0"].max_replicas) == bounds
    assert (pool_spec["minReplicaCount"], pool_spec["maxReplicaCount"]) == bounds
    # The engine emulation's minimum pods come from it too.
    templates = pod_templates([as_policy_resource(r) for r in requests_runs["dev"].resources])
    assert {t.owner.name: t.min_replicas for t in templates}["iris-deployment"] == 1


@pytest.mark.parametrize("stack", STACKS)
def test_the_stacks_on_requests_pass_every_mandatory_policy(requests_project, requests_runs, stack):
    violations = check(requests_runs[stack], stack_policy_settings(requests_project, stack))
    assert [str(v) for v in violations if v.enforcement == MANDATORY] == []


def replaced(resources: list[Resource], type_: str, change) -> list[Resource]:
    out = []
    for resource in resources:
        if resource.type == type_:
            props = copy.deepcopy(dict(resource.props))
            change(props)
            resource = dataclasses.replace(resource, props=props)
        out.append(resource)
    return out


def test_production_needs_two_replicas_from_a_scaled_object_too(requests_project, requests_runs):
    settings = stack_policy_settings(requests_project, "prod")
    resources = replaced(
        [as_policy_resource(r) for r in requests_runs["prod"].resources],
        SCALED_OBJECT,
        lambda p: p["spec"].update(minReplicaCount=1),
    )
    from policy.rules import evaluate

    found = [v for v in evaluate(resources, settings) if v.rule == "production-replicas"]
    assert [v.message for v in found] == ["minReplicaCount 1 < 2 in production"]


def test_an_hpa_beside_a_scaled_object_is_refused_as_kedas_webhook_refuses_it(requests_project, requests_runs):
    settings = stack_policy_settings(requests_project, "dev")
    resources = [as_policy_resource(r) for r in requests_runs["dev"].resources]
    scaler = next(r for r in resources if r.name == "iris-scaler")
    deployment = scaler.spec["scaleTargetRef"]["name"]
    hpa = next(r for r in resources if r.name == "taxi-fare-hpa")
    extra_hpa = dataclasses.replace(
        hpa,
        name="iris-hpa",
        props=copy.deepcopy(dict(hpa.props)) | {"metadata": {"name": "iris-hpa-1", "namespace": hpa.namespace}},
    )
    extra_hpa.props["spec"]["scaleTargetRef"]["name"] = deployment

    def rule(objects):
        from policy.rules import evaluate

        return [v for v in evaluate(objects, settings) if v.rule == "one-autoscaler-per-workload"]

    assert rule(resources) == []
    (violation,) = rule([*resources, extra_hpa])
    assert violation.resource.name == "iris-scaler" and violation.enforcement == MANDATORY
    assert violation.message == (
        f"KEDA's webhook refuses it: the workload '{deployment}' of type 'apps/v1.Deployment' is already managed "
        "by the hpa 'iris-hpa-1'"
    )
    # KEDA skips an HPA that disowns the check (validations.keda.sh/hpa-ownership: "false").
    disowned = dataclasses.replace(
        extra_hpa,
        props=extra_hpa.props
        | {"metadata": extra_hpa.props["metadata"] | {"annotations": {"validations.keda.sh/hpa-ownership": "false"}}},
    )
    assert rule([*resources, disowned]) == []
    # A second ScaledObject on the same Deployment.
    twin = dataclasses.replace(
        scaler,
        name="iris-twin",
        props=dict(scaler.props) | {"metadata": {"name": "twin", "namespace": scaler.namespace}},
    )
    (violation,) = rule([*resources, twin])
    assert violation.resource.name == "iris-twin"
    assert violation.message.endswith(f"already managed by the ScaledObject '{scaler.object_name}'")


def test_a_scaled_object_of_a_missing_deployment_is_a_dangling_reference(requests_project, requests_runs):
    settings = stack_policy_settings(requests_project, "dev")
    resources = [as_policy_resource(r) for r in requests_runs["dev"].resources]
    assert references_resolve(resources, settings) == []
    broken = replaced(resources, SCALED_OBJECT, lambda p: p["spec"]["scaleTargetRef"].update(name="gone"))
    messages = [m for _, m in references_resolve(broken, settings)]
    assert any("spec.scaleTargetRef names Deployment models-dev/gone" in m for m in messages), messages


# Bad input ------------------------------------------------------------------------------------------


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_manifests(root)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("autoscaling", "environment", "expected"),
    [
        (
            {"min_replicas": 1, "max_replicas": 4, "metric": "requests"},
            None,
            "models/iris.yaml: serving.autoscaling.target_requests_per_second: required when metric is requests",
        ),
        (
            {"min_replicas": 1, "max_replicas": 4, "target_requests_per_second": 20},
            None,
            "models/iris.yaml: serving.autoscaling.target_requests_per_second: Got 20, but metric is cpu",
        ),
        (
            {"min_replicas": 1, "max_replicas": 4, "metric": "requests", "target_requests_per_second": 0},
            None,
            "models/iris.yaml: serving.autoscaling.target_requests_per_second: Input should be greater than 0",
        ),
        (
            {"min_replicas": 1, "max_replicas": 4, "metric": "memory"},
            None,
            "models/iris.yaml: serving.autoscaling.metric: Input should be 'cpu' or 'requests'",
        ),
        (
            None,
            {"metric": "requests"},
            "models/iris.yaml: environments.prod.autoscaling.target_requests_per_second: required when metric is "
            "requests",
        ),
        (
            None,
            {"target_requests_per_second": 5},
            "models/iris.yaml: environments.prod.autoscaling.target_requests_per_second: Got 5, but metric is cpu",
        ),
    ],
)
def test_a_bad_metric_or_target_is_refused_by_file_and_field(project, autoscaling, environment, expected):
    def change(document):
        if autoscaling is not None:
            document["serving"]["autoscaling"] = autoscaling
        if environment is not None:
            document["environments"]["prod"]["autoscaling"] = environment

    edit_yaml(project / "models" / "iris.yaml", change)
    assert any(e.startswith(expected) for e in errors_of(project)), errors_of(project)


def test_an_environment_back_on_cpu_drops_the_request_target(project):
    def change(document):
        scale_iris_on_requests(document)
        document["environments"]["prod"]["autoscaling"] = {"metric": "cpu"}

    edit_yaml(project / "models" / "iris.yaml", change)
    (iris,) = [m for m in load_manifests(project) if m.name == "iris"]
    prod, dev = iris.serving_for("prod").autoscaling, iris.serving_for("dev").autoscaling
    assert (prod.metric, prod.target_requests_per_second, prod.max_replicas) == ("cpu", None, 4)
    assert (dev.metric, dev.target_requests_per_second) == ("requests", 20)


def test_a_pool_with_a_bad_target_is_refused_by_file_and_field(project):
    def change(document):
        (pool,) = document["config"]["model-serving:servingPools"]["pools"]
        pool["autoscaling"]["metric"] = "requests"

    edit_yaml(project / "stacks" / "Pulumi.local.yaml", change)
    _, errors = validate_project(project)
    assert [str(e) for e in errors] == [
        "stacks/Pulumi.local.yaml: config.model-serving:servingPools.pools.0.autoscaling.targetRequestsPerSecond: "
        "required when metric is requests: the prediction calls per second one replica takes"
    ]


def test_requests_on_a_stack_without_its_prometheus_is_a_stack_file_error(project, capsys):
    edit_yaml(project / "models" / "iris.yaml", scale_iris_on_requests)
    _, errors = validate_project(project)
    by_file = {(e.file, e.field): e.message for e in errors}
    message = by_file[("stacks/Pulumi.dev.yaml", "config.model-serving:monitoring.prometheusAddress")]
    assert message.startswith("required: models/iris.yaml (serving.autoscaling.metric) scale(s) on requests")
    # kind serves iris without a ServiceMonitor: nothing would put its series in Prometheus.
    assert ("stacks/Pulumi.kind.yaml", "config.model-serving:monitoring.prometheusOperator") in by_file
    # The command says so, without a traceback.
    assert main(["--root", str(project), "validate"]) == 1
    printed = capsys.readouterr()
    assert "monitoring.prometheusAddress" in printed.out + printed.err
    assert "Traceback" not in printed.out + printed.err


# The trigger's query on Prometheus's own engine --------------------------------------------------


def pod_of(deployment: str, suffix: str = "7d9f8b6c5d-x2x4z") -> str:
    return f"{deployment}-{suffix}"


def exported(pod: str, model: str, predictions: float, failures: float = 0.0, probes: float = 0.0) -> list[dict]:
    """What TF-Serving exports on `pod` for `model`, as counters: REST and gRPC predictions (their
    latency count), failed calls, and the kubelet's probes, which succeed with an empty API and add
    to `request_count{status="OK"}` (infra/model/observability.py)."""
    labels = {"namespace": "models-dev", "pod": pod, "model_name": model}
    rates = [
        (LATENCY_COUNT, predictions * 2 / 3, {"API": "predict"}),
        (LATENCY_COUNT, predictions / 3, {"API": "Predict"}),
        (LATENCY_COUNT, probes, {"API": ""}),
        (REQUEST_COUNT, predictions + probes, {"status": "OK"}),
        (REQUEST_COUNT, failures, {"status": "INVALID_ARGUMENT"}),
    ]
    # A counter never incremented is absent.
    return [counter(name, rate, labels | more) for name, rate, more in rates if rate]


def test_the_model_query_counts_its_own_prediction_calls_only(tmp_path):
    deployment = "iris-deployment-5a5390cf"
    query = keda_builders.request_rate_query("models-dev", deployment, "iris")
    check_rules(tmp_path / "check", [{"name": "trigger", "rules": [{"record": "iris_rps", "expr": query}]}])
    mine = exported(pod_of(deployment), "iris", predictions=9.0, failures=1.0)
    cases = {
        "calls": (mine, 10.0),
        "two-pods": (mine + exported(pod_of(deployment, "7d9f8b6c5d-q1w2e"), "iris", 5.0), 15.0),
        # The kubelet's probes are not load.
        "probes": (exported(pod_of(deployment), "iris", 9.0, 1.0, probes=6.0), 10.0),
        "probes-only": (exported(pod_of(deployment), "iris", 0.0, probes=6.0), None),
        "all-failing": (exported(pod_of(deployment), "iris", 0.0, failures=2.0), 2.0),
        # Another model's calls, the canary's and Flagger's primary's pods are not this workload's.
        "elsewhere": (
            mine
            + exported(pod_of(deployment), "taxi-fare", 50.0)
            + exported(pod_of("iris-canary-deployment-0b1c2d3e"), "iris", 7.0)
            + exported(pod_of(f"{deployment}-primary"), "iris", 7.0)
            + [
                dict(s, series=s["series"].replace("models-dev", "models-staging"))
                for s in exported(pod_of(deployment), "iris", 3.0)
            ],
            10.0,
        ),
        # Nothing exported yet: no series, which KEDA reads as 0 (ignoreNullValues).
        "absent": ([], None),
    }
    for name, (series, value) in cases.items():
        run_rule_tests(tmp_path / name, series, [expr_case(query, [] if value is None else [({}, value)])])


def test_the_pool_query_sums_its_members_and_the_primary_query_counts_the_primary(tmp_path):
    shard = "shared-0-deployment-1a2b3c4d"
    pool_query = keda_builders.request_rate_query("models-dev", shard, None)
    members = exported(pod_of(shard), "iris", 9.0, 1.0, probes=6.0) + exported(pod_of(shard), "taxi-fare", 5.0)
    other_shard = exported(pod_of("shared-1-deployment-5e6f7a8b"), "iris", 40.0)
    run_rule_tests(tmp_path / "pool", members + other_shard, [expr_case(pool_query, [({}, 15.0)])])
    target = "iris-deployment-5a5390cf"
    primary = keda_builders.request_rate_query("models-dev", f"{target}-primary", "iris")
    traffic = exported(pod_of(f"{target}-primary"), "iris", 8.0) + exported(pod_of(target), "iris", 2.0)
    run_rule_tests(tmp_path / "primary", traffic, [expr_case(primary, [({}, 8.0)])])


# The cpu-to-requests switch: the plan says what must come before `pulumi up` ---------------------


def test_the_plan_of_a_switch_to_requests_names_the_step_pulumi_up_needs_first(requests_runs):
    """`pulumi up` creates the ScaledObject before it deletes the HPA (deletes come last), and KEDA's
    webhook refuses a ScaledObject whose workload an HPA scales: the plan says so, with the command
    that exempts the old HPA, in the text, the comment and the JSON (which its schema admits)."""
    import jsonschema

    from scripts.modelctl.handover import handovers
    from scripts.modelctl.plan import plan_stack
    from scripts.modelctl.report import PlanReport, render_markdown, render_text, stack_json
    from tests.conftest import ROOT

    plan = plan_stack("dev", run_stack(ROOT, "dev"), requests_runs["dev"])
    found = {h.instance: h for h in handovers(plan)}
    assert set(found) == {"iris", "iris-canary"}
    assert found["iris"].command() == [
        "kubectl",
        "--namespace",
        "models-dev",
        "annotate",
        "hpa",
        "--selector",
        "app.kubernetes.io/instance=iris",
        "validations.keda.sh/hpa-ownership=false",
    ]
    command = "kubectl --namespace models-dev annotate hpa --selector app.kubernetes.io/instance=iris"
    text = render_text(PlanReport([plan], "main", "working tree", {"iris"}))
    moves = "moves from its HorizontalPodAutoscaler to the KEDA ScaledObject"
    assert f"warning: stack dev: iris {moves} iris-scaler" in text
    assert f"  {command} validations.keda.sh/hpa-ownership=false\n" in text
    comment = render_markdown(PlanReport([plan], "main", "working tree", {"iris"}))
    assert "> [!WARNING]" in comment and f"`{command} validations.keda.sh/hpa-ownership=false`" in comment
    assert f"> stack `dev`: `iris` {moves} `iris-scaler`" in comment
    document = stack_json(plan)
    schema = json.loads((ROOT / "scripts" / "modelctl" / "plan.schema.json").read_text())
    jsonschema.validate(document, schema)
    assert sorted(step["command"][-2] for step in document["beforeUpdate"]) == [
        "app.kubernetes.io/instance=iris",
        "app.kubernetes.io/instance=iris-canary",
    ]
    assert all("KEDA's webhook refuses" in step["reason"] for step in document["beforeUpdate"])
    # Once on requests, or back to cpu (KEDA's webhook does not check HPAs): nothing comes first.
    assert handovers(plan_stack("dev", requests_runs["dev"], requests_runs["dev"])) == []
    assert handovers(plan_stack("dev", requests_runs["dev"], run_stack(ROOT, "dev"))) == []
    assert "beforeUpdate" not in stack_json(plan_stack("dev", requests_runs["dev"], run_stack(ROOT, "dev")))
