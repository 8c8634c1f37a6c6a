"""`modelctl smoke` against a local HTTP server speaking TF-Serving's REST status and predict."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.modelctl.cli import main
from tests.conftest import edit_yaml


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


def test_smoke_passes_when_every_model_answers(tf_serving, capsys):
    server = tf_serving(
        {
            "iris": {"versions": {3: "AVAILABLE", 2: "AVAILABLE"}, "predict": "ok"},
            "taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
        }
    )
    assert main(["smoke", "--stack", "prod", "--base-url", server.url]) == 0
    out = capsys.readouterr().out
    assert "2 models at" in out and "4 checks passed, 0 failed" in out
    posted = [body for method, path, body in server.requests if method == "POST"]
    # The predict body is the manifest's example request.
    assert {"instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]} in posted


def test_smoke_fails_on_a_failing_model(tf_serving, capsys):
    server = tf_serving(
        {
            "iris": {"versions": {2: "AVAILABLE"}, "predict": "error"},
            "taxi-fare": {"versions": {2: "LOADING"}, "predict": "garbage"},
        }
    )
    assert main(["smoke", "--stack", "prod", "--base-url", server.url]) == 1
    out = capsys.readouterr().out
    assert "FAIL iris: predict: POST" in out and "answered 500" in out
    assert "FAIL taxi-fare: status: versions not available: {2: 'LOADING'}" in out
    assert "FAIL taxi-fare: predict" in out
    assert "1 checks passed, 3 failed" in out


def test_smoke_fails_on_an_unknown_model_and_an_unreachable_server(tf_serving, capsys, project):
    server = tf_serving({"taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"}})
    assert main(["--root", str(project), "smoke", "--stack", "prod", "--base-url", server.url]) == 1
    assert "FAIL iris: status: GET" in capsys.readouterr().out
    assert main(["smoke", "--stack", "prod", "--base-url", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "Connection refused" in capsys.readouterr().out


def test_smoke_without_an_example_request_checks_status_only(tf_serving, capsys, project):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["serving"].pop("example_request"))
    server = tf_serving(
        {
            "iris": {"versions": {2: "AVAILABLE"}, "predict": "error"},
            "taxi-fare": {"versions": {2: "AVAILABLE"}, "predict": "ok"},
        }
    )
    assert main(["--root", str(project), "smoke", "--stack", "prod", "--base-url", server.url]) == 0
    assert "iris: predict: skipped" in capsys.readouterr().out
