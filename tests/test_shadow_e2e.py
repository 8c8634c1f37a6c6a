"""The e2e's shadow step (scripts/e2e/e2e.sh `shadow_takes_mirrored_calls_only`, written for kind)
against the fake tools of tests/test_e2e.py: the shadow is declared, `pulumi up` runs, clients must
see only the stable version while the shadow's own metrics count mirrored predictions, and the
shadow is removed again; and the helper's manifest edit."""

from __future__ import annotations

import pytest

from infra.spec.manifest import load_manifests
from tests.conftest import copy_project
from tests.test_e2e import E2E, FAKE, Fakes

# TF-Serving's Prometheus text on the shadow's REST port: one probe series (empty API) and two
# prediction series, REST and gRPC (only `predict` is counted: the mirror copies REST calls).
METRICS = (
    "# TYPE :tensorflow:serving:request_latency_count counter\n"
    ':tensorflow:serving:request_latency_count{API="",entrypoint="REST",model_name="iris"} 40\n'
    ':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",model_name="iris"} 7\n'
    ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="iris"} 5\n'
)


@pytest.fixture
def fakes(tmp_path) -> Fakes:
    return Fakes(tmp_path)


def shadow_step(fakes: Fakes, metrics: str, status_version: str = "4"):
    """curl: 200 for predictions, `metrics` for the shadow's metrics, TF-Serving's status otherwise."""
    (fakes.bin / "curl").write_text(
        FAKE.replace(
            'stdout_var="FAKE_STDOUT_$tool"',
            'case "$*" in *:predict*) printf 200; exit 0 ;; *monitoring/prometheus/metrics*) '
            'printf "%s" "$FAKE_METRICS"; exit 0 ;; esac\nstdout_var="FAKE_STDOUT_$tool"',
        )
    )
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
shadow_takes_mirrored_calls_only
"""
    status = f'{{"model_version_status": [{{"version": "{status_version}", "state": "AVAILABLE"}}]}}'
    return fakes.run(script, timeout=120, FAKE_STDOUT_curl=status, FAKE_METRICS=metrics)


def test_the_shadow_step_declares_mirrors_checks_and_removes_the_shadow(fakes):
    result = shadow_step(fakes, METRICS)
    assert result.returncode == 0, result.stderr
    calls = fakes.calls()
    steps = [
        "shadow iris --env kind --version 5 --percent 100",
        "pulumi up --stack kind",
        "port-forward --address 127.0.0.1 service/iris-shadow 18501:8501",
        "http://127.0.0.1:18501/monitoring/prometheus/metrics",
        "shadow iris --env kind --remove",
    ]
    positions = [next(i for i, c in enumerate(calls) if step in c) for step in steps]
    assert positions == sorted(positions), calls
    ups = [i for i, c in enumerate(calls) if c.startswith("pulumi up --stack kind")]
    assert len(ups) == 2 and ups[1] > positions[-1], "the removal is applied"
    log = (fakes.logs / "e2e.log").read_text()
    assert "shadow version 5 served 7 mirrored predictions" in log and "all saw version 4" in log


def test_the_shadow_step_fails_when_the_shadow_serves_nothing(fakes):
    result = shadow_step(fakes, METRICS.replace("} 7\n", "} 0\n"))
    assert result.returncode == 1
    assert "the shadow (version 5) served no mirrored prediction" in (fakes.logs / "e2e.log").read_text()
    assert not any("--remove" in c for c in fakes.calls())


def test_the_shadow_step_fails_when_a_client_sees_the_shadow(fakes):
    result = shadow_step(fakes, METRICS, status_version="5")
    assert result.returncode == 1
    assert "clients must see only the stable version 4" in (fakes.logs / "e2e.log").read_text()


def test_main_runs_the_shadow_step_after_the_rollback_and_before_the_pools():
    body = E2E.read_text().split("\nmain() {", 1)[1]
    order = ["rollback ||", "shadow_takes_mirrored_calls_only ||", "pool_serves_two_models_and_bumps_one ||"]
    assert [body.index(step) for step in order] == sorted(body.index(step) for step in order)


def test_the_helper_sets_and_removes_the_shadow(tmp_path):
    from scripts.e2e.helpers import main

    root = copy_project(tmp_path / "project")
    assert main(["--root", str(root), "shadow", "iris", "--env", "dev", "--version", "1", "--percent", "30"]) == 0
    assert "    shadow: {version: 1, percent: 30}" in (root / "models" / "iris.yaml").read_text()
    (iris,) = [m for m in load_manifests(root) if m.name == "iris"]
    assert (iris.environments["dev"].shadow.version, iris.environments["dev"].shadow.percent) == (1, 30)
    assert main(["--root", str(root), "shadow", "iris", "--env", "dev", "--remove"]) == 0
    (iris,) = [m for m in load_manifests(root) if m.name == "iris"]
    assert iris.environments["dev"].shadow is None
