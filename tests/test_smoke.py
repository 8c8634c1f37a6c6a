"""`modelctl smoke` against a local HTTP server speaking TF-Serving's REST status and predict."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.modelctl.cli import main
from tests.conftest import MANIFESTS, edit_yaml
from tests.fake_grpc import FakeGrpcServer, FakePredictionService
from tests.fake_kubernetes import FakeKubernetes, canary, deployment


class FakeTfServing(ThreadingHTTPServer):
    """`models`: name -> {"versions": {version: state}, "predict": "ok" | "error" | "garbage"}."""

    def __init__(self, models: dict):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.models = models
        self.requests: list[tuple[str, str, object]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeTfServing

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        name = self.path.removeprefix("/v1/models/")
        self.server.requests.append(("GET", self.path, None))
        model = self.server.models.get(name)
        if model is None:
            return self._send(404, {"error": f"Could not find any versions of model {name}"})
        statuses = [
            {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
            for v, state in model["versions"].items()
        ]
        return self._send(200, {"model_version_status": statuses})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body))
        name = self.path.removeprefix("/v1/models/").removesuffix(":predict")
        behaviour = self.server.models.get(name, {}).get("predict", "missing")
        if behaviour == "ok":
            return self._send(200, {"predictions": [[0.9, 0.05, 0.05] for _ in body["instances"]]})
        if behaviour == "garbage":
            return self._send(200, "<html>gateway page</html>")
        return self._send(500, {"error": "Failed to process the request"})


@pytest.fixture
def tf_serving():
    servers = []

    def start(models: dict) -> FakeTfServing:
        server = FakeTfServing(models)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def grpc_server():
    """A PredictionService on loopback for the models that expose gRPC (iris); `failing` refuses."""
    servers = []

    def start(failing: frozenset[str] = frozenset()) -> FakeGrpcServer:
        server = FakeGrpcServer(FakePredictionService({m.name: m for m in MANIFESTS}, failing))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def grpc_options(server: FakeGrpcServer) -> list[str]:
    return ["--grpc-target", server.target, "--grpc-plaintext"]


def test_smoke_passes_when_every_model_answers(tf_serving, grpc_server, capsys):
    grpc = grpc_server()
    server = tf_serving(
        {
            "iris": {"versions": {3: "AVAILABLE", 2: "AVAILABLE"}, "predict": "ok"},
            "taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
        }
    )
    assert main(["smoke", "--stack", "prod", "--base-url", server.url, "--no-wait", *grpc_options(grpc)]) == 0
    out = capsys.readouterr().out
    assert "2 models at" in out and "5 checks passed, 0 failed" in out
    posted = [body for method, path, body in server.requests if method == "POST"]
    # The predict body is the manifest's example request.
    example = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert {"instances": [example]} in posted
    # iris serves gRPC too: one Predict with the same example as a PredictRequest (taxi-fare does not).
    assert f"ok   iris: grpc predict: version 3: outputs classes, scores, species at {grpc.target}" in out
    (request,) = grpc.service.requests
    assert request.model_spec.name == "iris" and request.model_spec.signature_name == "serving_default"
    import tensorflow as tf

    sent = {name: tf.make_ndarray(t).tolist() for name, t in request.inputs.items()}
    assert sent.keys() == example.keys()
    assert all(sent[name] == pytest.approx([value]) for name, value in example.items())


def test_smoke_fails_on_a_failing_model(tf_serving, grpc_server, capsys):
    grpc = grpc_server(failing=frozenset({"iris"}))
    server = tf_serving(
        {
            "iris": {"versions": {2: "AVAILABLE"}, "predict": "error"},
            "taxi-fare": {"versions": {2: "LOADING"}, "predict": "garbage"},
        }
    )
    assert main(["smoke", "--stack", "prod", "--base-url", server.url, "--no-wait", *grpc_options(grpc)]) == 1
    out = capsys.readouterr().out
    assert "FAIL iris: predict: POST" in out and "answered 500" in out
    assert f"FAIL iris: grpc predict: Predict at {grpc.target} failed: INVALID_ARGUMENT: input size" in out
    assert "FAIL taxi-fare: status: versions not available: {2: 'LOADING'}" in out
    assert "FAIL taxi-fare: predict" in out
    assert "1 checks passed, 4 failed" in out


def test_smoke_fails_on_an_unknown_model_and_an_unreachable_server(tf_serving, capsys, project):
    server = tf_serving({"taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"}})
    assert main(["--root", str(project), "smoke", "--stack", "prod", "--base-url", server.url, "--no-wait"]) == 1
    assert "FAIL iris: status: GET" in capsys.readouterr().out
    assert main(["smoke", "--stack", "prod", "--base-url", "http://127.0.0.1:9", "--timeout", "2", "--no-wait"]) == 1
    assert "Connection refused" in capsys.readouterr().out


def test_smoke_without_an_example_request_checks_status_only(tf_serving, capsys, project):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["serving"].pop("example_request"))
    server = tf_serving(
        {
            "iris": {"versions": {2: "AVAILABLE"}, "predict": "error"},
            "taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
        }
    )
    assert main(["--root", str(project), "smoke", "--stack", "prod", "--base-url", server.url, "--no-wait"]) == 0
    assert "iris: predict: skipped" in capsys.readouterr().out


# --- On a Flagger stack: wait for Flagger's verdict, then smoke (issue 9, j) ---------------

PROD_CONTEXT = "prod-eu-west-1"  # stacks/Pulumi.prod.yaml `kubernetes.context`
HEALTHY = {
    "iris": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
    "taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
}


def rollout(model: str, phase: str, primary_hash: str, tracked: str = "new") -> dict:
    """One step of a model's rollout as the cluster shows it; `pulumi up` applied `hash-new`."""
    target = f"{model}-deployment-1a2b3c4d"
    return {
        "canary": canary(model, target, phase, [f"{model}-config-{tracked}"], failed_checks=5),
        "deployments": [
            deployment(target, "hash-new", f"{model}-config-new"),
            deployment(f"{target}-primary", primary_hash, f"{model}-config-{primary_hash}-primary"),
        ],
    }


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """Starts a fake Kubernetes API server with these timelines; KUBECONFIG points at it."""
    servers = []

    def start(timelines: dict) -> FakeKubernetes:
        server = FakeKubernetes("models", timelines).start()
        servers.append(server)
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig", PROD_CONTEXT)))
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def smoke_prod(server_url: str, *options: str) -> int:
    return main(["smoke", "--stack", "prod", "--base-url", server_url, "--poll-interval", "0.01", *options])


def test_smoke_waits_for_flaggers_promotion_then_smokes(tf_serving, grpc_server, cluster, capsys):
    models = tf_serving(HEALTHY)
    grpc = grpc_server()
    kubernetes = cluster(
        {
            # Flagger has not noticed `pulumi up` yet, then analyses, then promotes.
            "iris": [
                rollout("iris", "Succeeded", "hash-old", tracked="old"),
                rollout("iris", "Progressing", "hash-old"),
                rollout("iris", "Promoting", "hash-new"),
                rollout("iris", "Succeeded", "hash-new"),
            ],
            "taxi-fare": [rollout("taxi-fare", "Initialized", "hash-new")],  # its first deployment
        }
    )
    assert smoke_prod(models.url, *grpc_options(grpc)) == 0
    out = capsys.readouterr().out
    assert "rollout iris: waiting (phase Succeeded; waiting for the primary to serve this revision)" in out
    assert (
        "rollout iris: promoted (phase Succeeded;" in out and "rollout taxi-fare: promoted (phase Initialized;" in out
    )
    # The smoke test ran after both verdicts.
    assert out.index("rollout iris: promoted") < out.index("5 checks passed, 0 failed")
    assert kubernetes.steps["iris"] == 3


def test_a_failed_analysis_fails_the_stage_without_smoking(tf_serving, cluster, capsys):
    models = tf_serving(HEALTHY)
    cluster(
        {
            "iris": [rollout("iris", "Progressing", "hash-old"), rollout("iris", "Failed", "hash-old")],
            "taxi-fare": [rollout("taxi-fare", "Succeeded", "hash-new")],
        }
    )
    assert smoke_prod(models.url) == 1
    captured = capsys.readouterr()
    assert "modelctl smoke: iris: rollout failed: Flagger's analysis of iris-deployment-1a2b3c4d failed" in captured.err
    assert models.requests == []


def test_no_verdict_within_the_timeout_fails_naming_the_model_and_phase(tf_serving, cluster, capsys):
    models = tf_serving(HEALTHY)
    cluster(
        {
            "iris": [rollout("iris", "Progressing", "hash-old")],
            "taxi-fare": [rollout("taxi-fare", "Succeeded", "hash-new")],
        }
    )
    assert smoke_prod(models.url, "--rollout-timeout", "0.05") == 1
    err = capsys.readouterr().err
    assert "modelctl smoke: iris: no verdict from Flagger within 0.05 s (last phase: Progressing;" in err
    assert "taxi-fare" not in err and models.requests == []


def test_an_unreachable_cluster_is_one_line(tf_serving, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert smoke_prod(tf_serving(HEALTHY).url) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("modelctl smoke: cannot use the kubeconfig (context 'prod-eu-west-1'): ")


def test_no_wait_and_bad_durations(tf_serving, grpc_server, capsys):
    url, options = tf_serving(HEALTHY).url, grpc_options(grpc_server())
    assert main(["smoke", "--stack", "prod", "--base-url", url, "--no-wait", *options]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["smoke", "--stack", "prod", "--rollout-timeout", "-1"])
    assert exit_.value.code == 1
    assert "argument --rollout-timeout: -1: seconds are a finite number, 0 or more" in capsys.readouterr().err


def test_smoke_help_says_exit_codes_and_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["smoke", "--help"])
    out = capsys.readouterr().out
    assert "exit codes:\n  0  every check passed" in out and "example:\n  modelctl smoke --stack prod" in out
    assert "--rollout-timeout SECONDS" in out and "--no-wait" in out


# `modelctl status --live`: what TF-Serving reports against what the manifests declare (prod:
# iris stable 2, taxi-fare stable 2; dev: iris stable 3 + canary 2).


def status(*args: str) -> list[str]:
    return ["status", *args, "--live", "--format", "json"]


def live_of(capsys) -> dict:
    document = json.loads(capsys.readouterr().out)
    return {model["name"]: model["live"] for model in document["models"]}


def test_status_live_matches_when_the_declared_versions_are_loaded(tf_serving, capsys):
    server = tf_serving({"iris": {"versions": {2: "AVAILABLE"}}, "taxi-fare": {"versions": {2: "AVAILABLE"}}})
    assert main(status("--stack", "prod", "--base-url", server.url)) == 0
    live = live_of(capsys)
    assert live["iris"] == {
        "url": f"{server.url}/v1/models/iris",
        "reachable": True,
        "loaded": [{"version": 2, "state": "AVAILABLE"}],
        "matches": True,
        "differences": [],
        "notes": [],
    }
    assert live["taxi-fare"]["matches"]
    assert [path for _, path, _ in server.requests] == ["/v1/models/iris", "/v1/models/taxi-fare"]


def test_status_live_flags_a_missing_version(tf_serving, capsys):
    server = tf_serving({"iris": {"versions": {}}, "taxi-fare": {"versions": {2: "LOADING"}}})
    assert main(status("--stack", "prod", "--base-url", server.url)) == 1
    live = live_of(capsys)
    assert live["iris"]["differences"] == ["version 2 (stable) is declared but not loaded"]
    assert live["taxi-fare"]["differences"] == ["version 2 (stable) is LOADING, not AVAILABLE"]


def test_status_live_flags_an_extra_version(tf_serving, capsys):
    server = tf_serving(
        {"iris": {"versions": {2: "AVAILABLE", 3: "AVAILABLE"}}, "taxi-fare": {"versions": {2: "AVAILABLE"}}}
    )
    assert main(["status", "--stack", "prod", "--live", "--base-url", server.url]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENCE: version 3 is loaded (AVAILABLE) but not declared" in out
    assert "1 differ from the manifests: iris" in out


def test_status_live_flags_an_unreachable_model(tf_serving, capsys):
    server = tf_serving({"iris": {"versions": {2: "AVAILABLE"}}})  # taxi-fare: TF-Serving's 404
    assert main(status("--stack", "prod", "--base-url", server.url)) == 1
    live = live_of(capsys)
    assert live["iris"]["matches"]
    assert not live["taxi-fare"]["reachable"] and live["taxi-fare"]["loaded"] is None
    assert "answered 404" in live["taxi-fare"]["differences"][0]
    # Nothing listens: every model is unreachable, one line each.
    server.shutdown()
    server.server_close()
    assert main(status("--stack", "prod", "--base-url", server.url, "--timeout", "2")) == 1
    assert all(not entry["reachable"] for entry in live_of(capsys).values())


def test_status_live_notes_the_other_workload_of_a_canary(tf_serving, capsys):
    # dev serves iris 3 with a canary 2: one request reaches one of the two workloads.
    server = tf_serving({"iris": {"versions": {3: "AVAILABLE"}}, "taxi-fare": {"versions": {2: "AVAILABLE"}}})
    assert main(status("--stack", "dev", "--base-url", server.url)) == 0
    live = live_of(capsys)
    assert live["iris"]["matches"] and "version 2 (canary) not seen" in live["iris"]["notes"][0]


def test_status_without_live_shows_owner_versions_metrics_and_environments(capsys):
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "iris · ml-platform@example.com" in out
    assert "  dev          dev                 3       2       10%" in out
    assert main(["status", "--stack", "prod", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    iris = next(m for m in document["models"] if m["name"] == "iris")
    assert iris["environments"] == [
        {"environment": "prod", "stacks": ["prod"], "stable": 2, "canary": None, "weight": None, "shadow": None}
    ]
    assert iris["versions"][0]["metrics"] == {"accuracy": 0.833}


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "--live"], "--live needs a --stack"),
        (["status", "--stack", "prod", "--base-url", "http://127.0.0.1:1"], "--base-url goes with --live"),
        (["status", "--stack", "nope"], "nope"),
    ],
)
def test_status_refuses_bad_input_with_one_error(args, message, capsys):
    assert main(args) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, example", [("status", "modelctl status --stack prod --live"), ("catalog", "modelctl catalog --out")]
)
def test_help_says_exit_codes_and_an_example(command, example, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "exit codes:\n  0  " in out and example in out
