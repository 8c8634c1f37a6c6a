"""Flagger's load tester and the Canaries' rollout webhooks: declared on every stack with Flagger,
isolated, and driving REST traffic and a gRPC Predict gate whose request is a valid PredictRequest
of the committed protoset; a release broken only on gRPC is rolled back (emulated offline: the
real webhook command runs under bash and jq against ghz reports)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from infra.model import loadtest
from infra.platform import loadtester
from infra.spec.settings import load_stack_settings
from scripts.modelctl.guardrails import check, stack_policy_settings
from tests.conftest import ROOT, STACKS
from tests.test_program import served

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CANARY = "kubernetes:flagger.app/v1beta1:Canary"
FLAGGER_STACKS = [s for s in STACKS if load_stack_settings(ROOT, s).flagger]
WORKLOAD_RULES = (
    "images-pinned",
    "requests-and-limits",
    "restricted-pod-security",
    "production-replicas",
    "service-isolation",
    "references-resolve",
    "pods-schedule",
)


def ghz_words(command: str) -> list[str]:
    """The ghz invocation of the gRPC check (`set -o pipefail; ghz ... | jq -e ...`)."""
    first = command.split(" | ")[0]
    assert first.startswith("set -o pipefail; ghz ")
    return shlex.split(first.removeprefix("set -o pipefail; "))


def objects(run, type_):
    return [r for r in run.resources if r.type == type_]


def canaries(run):
    return [r.object for r in objects(run, CANARY)]


def test_there_are_stacks_with_flagger():
    assert {"eks", "kind-flagger"} <= set(FLAGGER_STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_the_load_tester_is_declared_exactly_on_stacks_with_flagger(runs, stack):
    names = {r.name for r in runs[stack].resources}
    wanted = {"platform-loadtester", "platform-loadtester-service", "platform-loadtester-netpol"}
    assert (wanted <= names) == (stack in FLAGGER_STACKS)
    assert not (wanted & names) or stack in FLAGGER_STACKS


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_every_canary_calls_the_load_tester_of_its_stack_for_rest_and_grpc(runs, stack):
    run = runs[stack]
    settings = load_stack_settings(ROOT, stack)
    (service,) = [r.object for r in objects(run, SERVICE) if r.name == "platform-loadtester-service"]
    assert service["metadata"]["name"] == loadtester.NAME
    assert service["metadata"]["namespace"] == settings.namespace
    assert canaries(run)
    for canary in canaries(run):
        hooks = {h["name"]: h for h in canary["spec"]["analysis"]["webhooks"]}
        assert set(hooks) == {loadtest.REST_TRAFFIC, loadtest.GRPC_CHECK}
        assert {h["type"] for h in hooks.values()} == {"rollout"}
        assert {h["url"] for h in hooks.values()} == {f"http://{loadtester.NAME}.{settings.namespace}:80/"}
        name = canary["spec"]["service"]["name"]
        rest = shlex.split(hooks[loadtest.REST_TRAFFIC]["metadata"]["cmd"])
        assert rest[0] == "hey" and hooks[loadtest.REST_TRAFFIC]["metadata"]["type"] == "cmd"
        assert rest[-1] == f"http://{name}-canary.{settings.namespace}:8501/v1/models/{name}:predict"
        # Traffic for the whole step: `hey -z <analysis interval>`.
        assert rest[rest.index("-z") + 1] == canary["spec"]["analysis"]["interval"]
        grpc = hooks[loadtest.GRPC_CHECK]
        assert grpc["metadata"]["type"] == "bash"  # blocking: its exit status is the check's
        words = ghz_words(grpc["metadata"]["cmd"])
        assert words[0] == "ghz" and words[-1] == f"{name}-canary.{settings.namespace}:8500"
        assert words[words.index("--call") + 1] == "tensorflow.serving.PredictionService/Predict"
        assert words[words.index("--protoset") + 1] == loadtester.PROTOSET_PATH


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_the_load_tester_passes_every_check_a_workload_passes(runs, stack):
    violations = check(runs[stack], stack_policy_settings(ROOT, stack))
    assert [str(v) for v in violations if v.rule in WORKLOAD_RULES] == []
    (deployment,) = [r.object for r in objects(runs[stack], DEPLOYMENT) if r.name == "platform-loadtester"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == loadtester.IMAGE
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False and pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_the_load_tester_takes_calls_from_flagger_only_and_reaches_serving_ports_only(runs, stack):
    (policy,) = [r.object for r in objects(runs[stack], NETPOL) if r.name == "platform-loadtester-netpol"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == loadtester.SELECTOR
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "flagger-system"}}}
    ]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    (egress,) = spec["egress"]
    (peer,) = egress["to"]
    assert peer == {"podSelector": {"matchExpressions": [{"key": "model-serving.dev/model", "operator": "Exists"}]}}
    assert sorted(p["port"] for p in egress["ports"]) == [8500, 8501]


# The gRPC request against TF-Serving's own descriptors ---------------------------------------------


def _predict_request_class():
    files = descriptor_pb2.FileDescriptorSet.FromString(loadtester.PROTOSET_SOURCE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    service = pool.FindServiceByName("tensorflow.serving.PredictionService")
    assert service.FindMethodByName("Predict").input_type.full_name == "tensorflow.serving.PredictRequest"
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.PredictRequest"))


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_the_grpc_request_is_a_predict_request_typed_by_the_contract(runs, stack):
    request_class = _predict_request_class()
    for canary in canaries(runs[stack]):
        hook = next(h for h in canary["spec"]["analysis"]["webhooks"] if h["name"] == loadtest.GRPC_CHECK)
        words = ghz_words(hook["metadata"]["cmd"])
        request = json_format.Parse(words[words.index("-d") + 1], request_class())
        name = canary["spec"]["service"]["name"]
        assert request.model_spec.name == name and request.model_spec.signature_name == "serving_default"
        if name == "iris":
            tensor = request.inputs["sepal_length"]
            assert tensor.dtype == 1 and list(tensor.float_val) == pytest.approx([5.1])  # DT_FLOAT
            assert [d.size for d in tensor.tensor_shape.dim] == [1]


def test_the_taxi_fare_request_carries_int64_and_string_tensors():
    model, _ = served("taxi-fare", "eks")
    request = json_format.ParseDict(loadtest.grpc_request(model), _predict_request_class()())
    hour, zone = request.inputs["hour"], request.inputs["pickup_zone"]
    assert hour.dtype == 9 and list(hour.int64_val) == [9]  # DT_INT64
    assert zone.dtype == 7 and list(zone.string_val) == [b"downtown"]  # DT_STRING
    assert set(request.inputs) == set(loadtest.contract(model).inputs)


def test_a_model_without_example_or_contract_gets_no_silent_request():
    model, _ = served("iris", "eks")
    bare = dataclasses.replace(
        model,
        serving=model.serving.model_copy(update={"example_request": None}),
        manifest=model.manifest.model_copy(
            update={
                "versions": {v: p.model_copy(update={"contract": None}) for v, p in model.manifest.versions.items()}
            }
        ),
    )
    with pytest.raises(loadtest.RequestError, match=r"no serving\.example_request and no contract"):
        loadtest.rest_body(bare)


def test_the_committed_protoset_is_tensorflow_serving_apis():
    """The protoset is what scripts/write_protoset.py writes from tensorflow-serving-api."""
    pytest.importorskip("tensorflow_serving")
    from scripts.write_protoset import protoset_bytes

    assert protoset_bytes() == loadtester.PROTOSET_SOURCE.read_bytes()


# A release broken only on gRPC is rolled back (Flagger's analysis, emulated) ------------------------


def _ghz_report(errors: int) -> dict:
    # The fields ghz's JSON report carries (bojand/ghz runner/reporter.go Report).
    return {
        "count": 20,
        "errorDistribution": {"rpc error: code = InvalidArgument": errors} if errors else {},
        "statusCodeDistribution": {"OK": 20 - errors} | ({"InvalidArgument": errors} if errors else {}),
    }


def run_webhook(hook: dict, tools: Path, ghz_report: dict | None) -> int:
    """The load tester's answer to one webhook (pkg/loadtester/server.go:L296-L336): `cmd` runs in
    the background (202); `bash` runs the command under bash, 200 on exit 0, else 500. `ghz` and
    `hey` are fakes on PATH; jq and bash are real."""
    if hook["metadata"]["type"] == "cmd":
        return 202
    (tools / "ghz.json").write_text(json.dumps(ghz_report) if ghz_report is not None else "")
    env = {"PATH": f"{tools}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", hook["metadata"]["cmd"]], env=env, capture_output=True, check=False)
    return 200 if done.returncode == 0 else 500


def analysis(canary: dict, tools: Path, ghz_report: dict, metrics_ok: bool = True) -> str:
    """Flagger's steps: rollout webhooks first, a reply above 202 fails the step
    (pkg/controller/scheduler.go:L752-L762, webhook.go:L90); failed checks reaching the threshold
    roll back (scheduler.go:L431-L438, L461-L462); enough good steps to reach maxWeight promote."""
    spec = canary["spec"]["analysis"]
    failed, weight = 0, 0
    while True:
        ok = all(run_webhook(h, tools, ghz_report) <= 202 for h in spec["webhooks"]) and metrics_ok
        if not ok:
            failed += 1
            if failed >= spec["threshold"]:
                return "rolled back"
            continue
        weight += spec["stepWeight"]
        if weight >= spec["maxWeight"]:
            return "promoted"


@pytest.fixture
def tools(tmp_path):
    ghz = tmp_path / "ghz"
    ghz.write_text(f'#!/usr/bin/env bash\ncat "{tmp_path}/ghz.json"\n[ -s "{tmp_path}/ghz.json" ]\n')
    ghz.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_a_release_that_fails_only_on_grpc_is_rolled_back(runs, stack, tools):
    for canary in canaries(runs[stack]):
        assert analysis(canary, tools, _ghz_report(errors=0)) == "promoted"
        assert analysis(canary, tools, _ghz_report(errors=3)) == "rolled back"
        assert analysis(canary, tools, None) == "rolled back"  # ghz could not even connect


def test_without_the_webhooks_a_grpc_only_failure_was_promoted(runs, tools):
    """The old Canary (no webhooks): REST metrics pass, gRPC is never called, the release is promoted."""
    for canary in canaries(runs["kind-flagger"]):
        old = json.loads(json.dumps(canary))
        old["spec"]["analysis"]["webhooks"] = []
        assert analysis(old, tools, _ghz_report(errors=20)) == "promoted"


@pytest.mark.parametrize("stack", FLAGGER_STACKS)
def test_every_models_policy_admits_the_load_tester_on_its_serving_ports(runs, stack):
    """Policies add up: the load tester's egress is useless unless each model's ingress admits it
    (a peer `podSelector: {}` is every pod of the policy's own namespace, the load tester's)."""
    policies = [r.object for r in objects(runs[stack], NETPOL) if r.name.endswith("-netpol")]
    models = [p for p in policies if "model-serving.dev/model" in p["spec"]["podSelector"].get("matchLabels", {})]
    assert models
    for policy in models:
        admitted = {
            port["port"]
            for rule in policy["spec"]["ingress"]
            if {"podSelector": {}} in rule.get("from", [])
            for port in rule["ports"]
        }
        assert admitted >= set(loadtester.SERVING_PORTS), policy["metadata"]


def _without_contracts(model):
    versions = model.manifest.versions
    return dataclasses.replace(
        model,
        manifest=model.manifest.model_copy(
            update={"versions": {v: p.model_copy(update={"contract": None}) for v, p in versions.items()}}
        ),
    )


def test_a_version_without_a_contract_is_checked_by_get_model_metadata_not_by_guessed_dtypes():
    model, settings = served("iris", "eks")
    bare = _without_contracts(model)
    hooks = {h["name"]: h for h in loadtest.webhooks(bare, settings, "1m")}
    assert set(hooks) == {loadtest.REST_TRAFFIC, loadtest.GRPC_CHECK}  # REST uses the example request
    words = ghz_words(hooks[loadtest.GRPC_CHECK]["metadata"]["cmd"])
    assert words[words.index("--call") + 1] == loadtester.METADATA_METHOD
    files = descriptor_pb2.FileDescriptorSet.FromString(loadtester.PROTOSET_SOURCE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    method = pool.FindServiceByName("tensorflow.serving.PredictionService").FindMethodByName("GetModelMetadata")
    request = json_format.Parse(words[words.index("-d") + 1], message_factory.GetMessageClass(method.input_type)())
    assert request.model_spec.name == "iris" and list(request.metadata_field) == ["signature_def"]


def test_without_example_or_contract_the_canary_has_no_rest_traffic_and_the_rule_says_so():
    model, settings = served("iris", "eks")
    bare = dataclasses.replace(
        _without_contracts(model), serving=model.serving.model_copy(update={"example_request": None})
    )
    assert [h["name"] for h in loadtest.webhooks(bare, settings, "1m")] == [loadtest.GRPC_CHECK]
