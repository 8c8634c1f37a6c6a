"""`modelctl promote --require-shadow`: the verdict is read from Prometheus's HTTP API and promotion is
refused when it is missing (no series) or worse than the stable's, allowed when it holds.

Prometheus here is a loopback HTTP server answering `GET /api/v1/query` in Prometheus's JSON format
(docs/querying/api.md: `{"status": "success", "data": {"resultType": "vector", "result": [...]}}`),
keyed by the exact queries of infra/model/shadow.py; that those queries compute what they claim is
proven on Prometheus's own engine in tests/test_shadow_queries.py. Whether the version is committed
in the object store is test_lifecycle.py's subject (real S3 on loopback, real SavedModels); here it is
taken as committed."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.model.shadow import verdict_queries
from infra.spec.shadow import Shadow
from scripts.modelctl import manifest_edit
from scripts.modelctl import promote as promote_module
from scripts.modelctl.cli import main
from scripts.modelctl.shadow_verdict import ShadowVerdictError, judge, query
from tests.conftest import edit_yaml

NAMESPACE = "models-dev"  # the dev stack's namespace
MINUTES = 30
QUERIES = verdict_queries(NAMESPACE, "iris", 1, MINUTES)
HOLDS = {
    "shadow_minutes": 31.0,
    "shadow_requests": 1200.0,
    "stable_requests": 12000.0,
    "shadow_error_ratio": 0.004,
    "stable_error_ratio": 0.002,
    "shadow_latency_p95_us": 2300.0,
    "stable_latency_p95_us": 2000.0,
}


class FakePrometheus:
    """Answers each verdict query with `answers[key]` (None: no series), anything else with an error."""

    def __init__(self) -> None:
        self.answers: dict[str, float | None] = dict(HOLDS)
        self.asked: list[str] = []
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                expr = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                fake.asked.append(expr)
                time.sleep(fake.delay)
                key = next((k for k, q in QUERIES.items() if q == expr), None)
                if url.path != "/api/v1/query" or key is None:
                    status = 400
                    body = {"status": "error", "errorType": "bad_data", "error": "parse error: unexpected"}
                else:
                    status, value = 200, fake.answers[key]
                    result = [] if value is None else [{"metric": {}, "value": [1765152000.0, repr(value)]}]
                    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                data = json.dumps(body).encode()
                # A client that gave up (the timeout test) has closed the connection.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus():
    fake = FakePrometheus()
    yield fake
    fake.close()


@pytest.fixture
def shadowed(project: Path, monkeypatch) -> Path:
    """iris in dev: stable 3, canary 2, shadow 1 (which beats 3 offline), verdict over 30 minutes."""

    def change(document):
        document["environments"]["dev"]["shadow"] = {
            "version": 1,
            "percent": 20,
            "verdict": {"min_duration_minutes": MINUTES, "min_requests": 1000},
        }
        document["versions"][1]["metrics"]["accuracy"] = 0.99

    edit_yaml(project / "models" / "iris.yaml", change)
    monkeypatch.setattr(promote_module, "require_committed", lambda *args, **kwargs: None)
    return project


def run_promote(root: Path, *more: str) -> int:
    return main(["--root", str(root), "promote", "iris", "--env", "dev", "--require-shadow", *more])


def test_promotion_is_allowed_when_the_verdict_holds(shadowed, prometheus, capsys):
    assert run_promote(shadowed, "--prometheus", prometheus.url) == 0
    out = capsys.readouterr().out
    assert "shadow verdict in stack dev (shadow_minutes 31, shadow_requests 1200" in out and ": holds" in out
    served = manifest_edit.load(shadowed, "iris").environments["dev"]
    # The shadow's version is stable; its shadow (and the canary) are gone.
    assert (served.stable, served.shadow, served.canary) == (1, None, None)
    assert sorted(prometheus.asked) == sorted(QUERIES.values())


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({key: None for key in HOLDS}, "the shadow served none prediction calls; at least 1000 needed"),
        ({"shadow_minutes": None}, "the shadow served calls in none of the last 30 minutes"),
        ({"shadow_minutes": 12.0}, "the shadow served calls in 12 of the last 30 minutes"),
        ({"shadow_requests": 999.0}, "the shadow served 999 prediction calls; at least 1000 needed"),
        ({"shadow_error_ratio": 0.05}, "error ratio 0.05 against the stable's 0.002: more than 0.01 higher"),
        ({"shadow_error_ratio": None}, "no error ratio to compare"),
        ({"stable_latency_p95_us": None}, "no p95 latency to compare"),
        ({"shadow_latency_p95_us": 2500.0}, "p95 latency 2500us against the stable's 2000us: more than 20% slower"),
    ],
)
def test_promotion_is_refused_when_the_verdict_is_missing_or_worse(shadowed, prometheus, capsys, answers, expected):
    before = (shadowed / "models" / "iris.yaml").read_text()
    prometheus.answers.update(answers)
    assert run_promote(shadowed, "--prometheus", prometheus.url) == 1
    err = capsys.readouterr().err
    assert "iris: shadow verdict in stack dev" in err and "does not hold" in err and expected in err, err
    assert "Traceback" not in err
    assert (shadowed / "models" / "iris.yaml").read_text() == before, "a refused promotion edits nothing"


def test_the_stacks_prometheus_is_read_and_none_named_is_an_error(shadowed, prometheus, capsys):
    assert run_promote(shadowed) == 1
    assert "stack dev names no Prometheus to read the shadow verdict from" in capsys.readouterr().err
    edit_yaml(
        shadowed / "stacks" / "Pulumi.dev.yaml",
        lambda d: d["config"]["model-serving:monitoring"].update(prometheusAddress=prometheus.url),
    )
    assert run_promote(shadowed) == 0
    assert prometheus.asked


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_or_failing_prometheus_refuses_without_traceback(shadowed, prometheus, capsys):
    before = (shadowed / "models" / "iris.yaml").read_text()
    assert run_promote(shadowed, "--prometheus", f"http://127.0.0.1:{unused_port()}") == 1
    err = capsys.readouterr().err
    assert "iris: no shadow verdict in stack dev: Prometheus at http://127.0.0.1:" in err and "unreachable" in err
    assert "Traceback" not in err
    # An error answer (a query Prometheus refuses) names what Prometheus said.
    with pytest.raises(ShadowVerdictError, match=r"answered HTTP 400: parse error: unexpected"):
        query(prometheus.url, "not a verdict query")
    assert (shadowed / "models" / "iris.yaml").read_text() == before


def test_a_slow_prometheus_is_given_a_bounded_time(prometheus):
    prometheus.delay = 2.0
    started = time.monotonic()
    with pytest.raises(ShadowVerdictError, match="unreachable: timed out"):
        query(prometheus.url, QUERIES["shadow_requests"], timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_without_a_shadow_or_for_another_version_there_is_no_verdict(shadowed, project, prometheus, capsys):
    assert run_promote(shadowed, "--prometheus", prometheus.url, "--version", "2") == 1
    assert "iris version 2 is not the shadow in dev (the shadow serves 1)" in capsys.readouterr().err
    edit_yaml(shadowed / "models" / "iris.yaml", lambda d: d["environments"]["dev"].pop("shadow"))
    assert run_promote(shadowed, "--prometheus", prometheus.url) == 1
    assert "iris has no shadow in dev, so no shadow verdict" in capsys.readouterr().err
    assert prometheus.asked == []


def test_the_offline_gate_still_applies(shadowed, prometheus, capsys):
    edit_yaml(shadowed / "models" / "iris.yaml", lambda d: d["versions"][1]["metrics"].update(accuracy=0.5))
    assert run_promote(shadowed, "--prometheus", prometheus.url) == 1
    assert "does not beat the champion" in capsys.readouterr().err


def test_the_margins_are_inclusive_and_come_from_the_manifest():
    shadow = Shadow(version=1)  # defaults: 60 minutes, 1000 calls, +0.01 errors, +20% latency
    at_the_edge = HOLDS | {
        "shadow_minutes": 60.0,
        "shadow_requests": 1000.0,
        "stable_error_ratio": 0.0,
        "shadow_error_ratio": 0.01,
        "shadow_latency_p95_us": 2400.0,
    }
    assert judge(at_the_edge, shadow) == []
    # Whole numbers in YAML are numbers here too.
    strict = Shadow.model_validate(
        {"version": 1, "verdict": {"max_error_ratio_increase": 0, "max_latency_increase": 0}}
    )
    assert len(judge(at_the_edge, strict)) == 2
