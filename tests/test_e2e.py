"""`make e2e` without a cluster: its steps against fake docker, kind, kubectl, pulumi, curl, openssl
and Python that record their arguments, and its helpers (the failing model, serving a version)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_project

E2E = ROOT / "scripts" / "e2e" / "e2e.sh"
TOOLS = ("docker", "kind", "kubectl", "pulumi", "curl", "openssl")
# A fake: appends "<tool> <args>" to $FAKE_LOG; sleeps $FAKE_SLEEP_SECONDS when "<tool> <args>"
# matches the glob $FAKE_SLEEP; fails with $FAKE_FAIL_CODE (default 1) when it matches the glob
# $FAKE_FAIL; prints $FAKE_STDOUT_<tool>.
FAKE = """#!/usr/bin/env bash
tool="$(basename "$0")"
printf '%s %s\\n' "$tool" "$*" >>"$FAKE_LOG"
if [[ -n "${FAKE_SLEEP:-}" ]]; then
    case "$tool $*" in $FAKE_SLEEP) sleep "${FAKE_SLEEP_SECONDS:-1}" ;; esac
fi
if [[ -n "${FAKE_FAIL:-}" ]]; then
    case "$tool $*" in $FAKE_FAIL) exit "${FAKE_FAIL_CODE:-1}" ;; esac
fi
stdout_var="FAKE_STDOUT_$tool"
printf '%s' "${!stdout_var:-}"
"""


class Fakes:
    """A PATH of fake tools and a sandbox for one run of the script."""

    def __init__(self, tmp_path: Path, missing: tuple[str, ...] = ()):
        self.bin = tmp_path / "fake-bin"
        self.bin.mkdir()
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.logs = tmp_path / "e2e-logs"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        for tool in (*TOOLS, "python"):
            if tool not in missing:
                (self.bin / tool).write_text(FAKE)
                (self.bin / tool).chmod(0o755)
        # Everything else on PATH (bash, git, timeout, coreutils), minus the tools under test: a
        # machine's real kind or docker must not stand in for a missing fake.
        self.system = tmp_path / "system-bin"
        self.system.mkdir()
        for directory in os.environ["PATH"].split(os.pathsep):
            if not Path(directory).is_dir():
                continue
            for entry in Path(directory).iterdir():
                name = entry.name
                if name in TOOLS or name == "python" or (self.system / name).exists():
                    continue
                if entry.is_file() and os.access(entry, os.X_OK):
                    (self.system / name).symlink_to(entry)
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{self.system}",
            "HOME": str(tmp_path),
            "TMPDIR": str(self.tmp),
            "FAKE_LOG": str(self.log),
            "E2E_LOG_DIR": str(self.logs),
            "E2E_PYTHON": str(self.bin / "python"),
            "E2E_WAIT_SECONDS": "3",
            "E2E_LOOP_PAUSE": "0",
            # The fake python's answer to "newest published version?"; curl's to every request.
            "FAKE_STDOUT_python": "3",
            "FAKE_STDOUT_curl": "200",
        }

    def run(self, script: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """`script` after sourcing e2e.sh (functions defined, nothing run), under `set -euo pipefail`."""
        command = f'source "{E2E}"\n{script}'
        return subprocess.run(
            ["bash", "-c", command], env=self.env | env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def index(calls: list[str], prefix: str) -> int:
    return next(i for i, call in enumerate(calls) if call.startswith(prefix))


@pytest.fixture
def fakes(tmp_path) -> Fakes:
    return Fakes(tmp_path)


def test_sourcing_the_script_runs_nothing(fakes):
    result = fakes.run("echo sourced")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "sourced\n" and fakes.calls() == []


def test_a_missing_tool_is_named(tmp_path):
    fakes = Fakes(tmp_path, missing=("kind", "pulumi"))
    result = fakes.run("setup_logs; require_tools")
    assert result.returncode == 1
    assert "missing: kind pulumi" in result.stderr
    assert "missing: kind pulumi" in (fakes.logs / "e2e.log").read_text()


def test_main_stops_before_creating_anything_when_a_tool_is_missing(tmp_path):
    fakes = Fakes(tmp_path, missing=("kubectl",))
    result = fakes.run("main")
    assert result.returncode == 1
    assert "missing: kubectl" in result.stderr
    assert not any(call.startswith("kind create") for call in fakes.calls())
    assert not any(call.startswith("kind delete") for call in fakes.calls()), "nothing was created"


def test_a_stopped_docker_daemon_is_named(fakes):
    result = fakes.run("setup_logs; require_tools", FAKE_FAIL="docker info*")
    assert result.returncode == 1
    assert "daemon does not answer" in result.stderr


def test_an_existing_cluster_of_the_same_name_is_left_alone(fakes):
    result = fakes.run(
        "setup_logs; trap teardown EXIT; make_workdir; create_cluster || exit 1",
        FAKE_STDOUT_kind="model-serving-e2e\n",
    )
    assert result.returncode == 1
    assert "exists already" in result.stderr
    assert [c for c in fakes.calls() if c.startswith("kind ")] == ["kind get clusters"]


def test_the_cluster_is_created_from_the_pinned_config_in_a_private_kubeconfig(fakes):
    result = fakes.run('setup_logs; make_workdir; create_cluster; echo "KUBECONFIG=$KUBECONFIG"')
    assert result.returncode == 0, result.stderr
    (create,) = [c for c in fakes.calls() if c.startswith("kind create")]
    assert f"--name model-serving-e2e --config {ROOT}/scripts/e2e/kind-config.yaml --wait 180s" in create
    assert f"KUBECONFIG={fakes.tmp}/model-serving-e2e." in result.stdout


def test_main_tears_the_cluster_down_after_a_failed_pulumi_up(fakes):
    result = fakes.run("main", timeout=300, FAKE_FAIL="pulumi up*")
    assert result.returncode == 1, result.stderr
    assert "FAILED: pulumi up --stack kind" in result.stderr
    calls = fakes.calls()
    expected_order = [
        "docker info",
        "kind get clusters",
        "kind create cluster --name model-serving-e2e",
        "pulumi whoami",
        "openssl rand",
        "kubectl --context kind-model-serving-e2e create namespace storage",
        "kubectl --context kind-model-serving-e2e apply -f",
        "kubectl --context kind-model-serving-e2e -n storage rollout status deployment/minio",
        "python -m scripts.e2e.helpers",  # create-bucket
        "python -m scripts.modelctl.cli",  # train
        "openssl req -x509",
        "kubectl --context kind-model-serving-e2e -n models create secret tls models-kind-tls",
        "kubectl --context kind-model-serving-e2e -n models create secret generic minio-credentials",
        "pulumi stack select --create kind",
        "pulumi up --stack kind --yes",
        "kubectl --context kind-model-serving-e2e get all -A",  # diagnostics of the failed run
        "kind delete cluster --name model-serving-e2e",
    ]
    positions = [index(calls, prefix) for prefix in expected_order]
    assert positions == sorted(positions), calls
    assert calls[-1] == "kind delete cluster --name model-serving-e2e"
    # The port-forward runs in the background: it records its call on its own time.
    forward = (
        "kubectl --context kind-model-serving-e2e -n storage port-forward --address 127.0.0.1 service/minio 19000:9000"
    )
    assert forward in calls
    # Versions 4 and 5 (after the fake's newest, 3) trained, published, and 4 served first.
    python_calls = [c for c in calls if c.startswith("python -m")]
    assert any("train iris --version 4" in c for c in python_calls)
    assert any("publish iris" in c and "--stack kind --version 5" in c for c in python_calls)
    assert any("serve iris --env kind --version 4" in c for c in python_calls)
    assert not any("version 5" in c and " serve " in c for c in python_calls), "the bump comes after the first up"
    assert not list(fakes.tmp.iterdir()), "the work directory is removed"
    log = (fakes.logs / "e2e.log").read_text()
    assert "exit 1: pulumi_in_project up --stack kind" in log and "failed (exit 1)" in log
    # MinIO's credentials reach kubectl in files: the uploaded logs never hold them.
    assert "--from-literal" not in log and "from-env-file" in log


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("kind create*", "FAILED: kind create cluster"),
        ("kubectl * apply -f*", "FAILED: installing MinIO"),
        ("python -m scripts.modelctl.cli * train *", "FAILED: training and publishing iris"),
        ("kubectl * create secret tls*", "FAILED: the stack's prerequisites"),
    ],
)
def test_every_failed_step_is_named_and_torn_down(fakes, failing, message):
    result = fakes.run("main", timeout=300, FAKE_FAIL=failing)
    assert result.returncode == 1
    assert message in result.stderr
    calls = fakes.calls()
    assert calls[-1] == "kind delete cluster --name model-serving-e2e"
    failed_at = next(i for i, c in enumerate(calls) if _glob(failing, c))
    assert not any(c.startswith("pulumi up") for c in calls[failed_at:]), "nothing runs after a failed step"


def _glob(pattern: str, text: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(text, pattern)


def test_an_interrupted_run_is_torn_down(fakes):
    # SIGTERM to the run's process group while `pulumi up` runs (as a runner cancelling the job,
    # or Ctrl-C in a terminal, signals it): the trap tears down and the run fails.
    process = subprocess.Popen(
        ["bash", "-c", f'source "{E2E}"\nmain'],
        env=fakes.env | {"FAKE_SLEEP": "pulumi up*", "FAKE_SLEEP_SECONDS": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not any(c.startswith("pulumi up") for c in fakes.calls()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - started < 30, "torn down at once, not after `pulumi up` would have ended"
    assert fakes.calls()[-1] == "kind delete cluster --name model-serving-e2e", stderr


def test_the_request_loop_stops_at_its_request_bound(fakes):
    out = fakes.tmp / "requests.txt"
    result = fakes.run(f'WORK="{fakes.tmp}"; request_loop "{out}"', E2E_LOOP_MAX_REQUESTS="7")
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == ["200"] * 7
    curls = [c for c in fakes.calls() if c.startswith("curl ")]
    assert len(curls) == 7
    # Each request: bounded, loopback only, the stack's host pinned to 127.0.0.1, our CA only.
    assert all("--max-time 10" in c and "--resolve models.kind.localtest.me:18443:127.0.0.1" in c for c in curls)
    assert all(f"--cacert {fakes.tmp}/tls/tls.crt" in c for c in curls)
    assert all("https://models.kind.localtest.me:18443/v1/models/iris:predict" in c for c in curls)


def test_the_request_loop_stops_at_its_time_bound(fakes):
    out = fakes.tmp / "requests.txt"
    started = time.monotonic()
    result = fakes.run(
        f'WORK="{fakes.tmp}"; request_loop "{out}"',
        E2E_LOOP_MAX_REQUESTS="100000",
        E2E_LOOP_MAX_SECONDS="2",
        FAKE_SLEEP="curl *",
        FAKE_SLEEP_SECONDS="0.2",
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert 1 <= len(out.read_text().splitlines()) < 100


def test_the_request_loop_stops_when_asked_and_counts_failures(fakes):
    out = fakes.tmp / "requests.txt"
    script = f"""WORK="{fakes.tmp}"
start_request_loop "{out}"
sleep 1
stop_request_loop "{out}"
echo "failures=$(count_failures "{out}") total=$(wc -l < "{out}")"
"""
    result = fakes.run(script, FAKE_STDOUT_curl="503", E2E_LOOP_PAUSE="0.05")
    assert result.returncode == 0, result.stderr
    total = len(out.read_text().splitlines())
    assert 0 < total < 4000 and f"failures={total} " in result.stdout


def test_a_request_without_an_answer_counts_as_failed(fakes):
    out = fakes.tmp / "requests.txt"
    result = fakes.run(
        f'WORK="{fakes.tmp}"; request_loop "{out}"; count_failures "{out}"',
        E2E_LOOP_MAX_REQUESTS="3",
        FAKE_FAIL="curl *",
        FAKE_FAIL_CODE="28",  # curl: operation timed out
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == ["000"] * 3 and result.stdout.strip() == "3"


def test_a_version_bump_with_one_failed_request_fails(fakes):
    # The first request of the loop fails, the rest succeed: the bump step must fail.
    (fakes.bin / "curl").write_text(
        FAKE.replace(
            'stdout_var="FAKE_STDOUT_$tool"',
            'if [[ ! -e "$FAKE_LOG.first" ]]; then touch "$FAKE_LOG.first"; printf 500; exit 0; fi\n'
            'stdout_var="FAKE_STDOUT_$tool"',
        )
    )
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
bump_under_traffic
"""
    result = fakes.run(script, FAKE_SLEEP="pulumi up*", FAKE_SLEEP_SECONDS="1")
    assert result.returncode == 1
    assert "failed" in (fakes.logs / "e2e.log").read_text()
    requests = (fakes.logs / "requests-bump.txt").read_text().splitlines()
    assert requests[0] == "500" and set(requests[1:]) <= {"200"}
    assert any(c.startswith("pulumi up --stack kind") for c in fakes.calls())


def test_expecting_a_version_gives_up_after_its_bound(fakes):
    started = time.monotonic()
    result = fakes.run(f'WORK="{fakes.tmp}"; setup_logs; expect_serving 5', FAKE_STDOUT_curl="{}")
    assert result.returncode == 1
    assert "expected version 5 serving" in result.stderr
    assert time.monotonic() - started < 30


def test_the_served_version_is_read_from_tf_servings_status(fakes):
    status = '{\n "model_version_status": [\n  {\n   "version": "5",\n   "state": "AVAILABLE",\n   "status": {}}]}'
    result = fakes.run(f'WORK="{fakes.tmp}"; serving_version', FAKE_STDOUT_curl=status)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def test_the_gateway_is_found_by_its_owning_gateway_labels(fakes):
    result = fakes.run(
        # `wait`: the fake port-forward runs in the background and records its call on its own time.
        f'WORK="{fakes.tmp}"; setup_logs; forward_gateway models; echo "forward=$GATEWAY_FORWARD"; wait',
        FAKE_STDOUT_kubectl="service/envoy-models-models-1a2b3c\n",
    )
    assert result.returncode == 0, result.stderr
    calls = fakes.calls()
    lookup = calls[index(calls, "kubectl --context kind-model-serving-e2e -n envoy-gateway-system get service")]
    assert "gateway.envoyproxy.io/owning-gateway-namespace=models,gateway.envoyproxy.io/owning-gateway-name=models" in (
        lookup
    )
    assert any("port-forward --address 127.0.0.1 service/envoy-models-models-1a2b3c 18443:443" in c for c in calls)
    assert "forward=" in result.stdout and "forward=\n" not in result.stdout


def test_the_flagger_phase_destroys_the_kind_stack_then_awaits_a_rollback(fakes):
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
flagger_rolls_back_a_failing_version
"""
    status = '{"model_version_status": [{"version": "4", "state": "AVAILABLE"}]}'
    result = fakes.run(script, timeout=300, FAKE_STDOUT_curl=status, FAKE_STDOUT_kubectl="service/envoy\n")
    # The fake curl answers the status for predictions too, so `predict` is not 200: the step
    # ends at its last check, after everything asserted below.
    calls = fakes.calls()
    order = [
        "pulumi destroy --stack kind --yes",
        "kubectl --context kind-model-serving-e2e -n models-flagger create secret tls models-kind-tls",
        "pulumi up --stack kind-flagger",
    ]
    positions = [index(calls, prefix) for prefix in order]
    assert positions == sorted(positions), calls
    assert result.returncode == 1
    assert "await-flagger --stack kind-flagger --model iris --expect promoted" in "\n".join(calls)


def test_the_broken_version_fails_every_prediction_after_the_flagger_check(fakes):
    # With curl answering predictions 200 and status version 4: the whole Flagger phase passes,
    # in order: promoted first, the broken version 6 published and served, then the failure awaited.
    (fakes.bin / "curl").write_text(
        FAKE.replace(
            'stdout_var="FAKE_STDOUT_$tool"',
            'case "$*" in *:predict*) printf 200; exit 0 ;; esac\nstdout_var="FAKE_STDOUT_$tool"',
        )
    )
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
flagger_rolls_back_a_failing_version
"""
    status = '{"model_version_status": [{"version": "4", "state": "AVAILABLE"}]}'
    result = fakes.run(script, timeout=300, FAKE_STDOUT_curl=status, FAKE_STDOUT_kubectl="service/envoy\n")
    assert result.returncode == 0, result.stderr
    helpers = [c for c in fakes.calls() if "scripts.e2e.helpers" in c or "scripts.modelctl.cli" in c]
    steps = [
        "--expect promoted",
        "break-model",
        "publish iris",
        "serve iris --env kind --version 6",
        "--expect failed",
    ]
    positions = [next(i for i, c in enumerate(helpers) if step in c) for step in steps]
    assert positions == sorted(positions), helpers
    assert f"break-model {fakes.tmp}/trained/iris/4 {fakes.tmp}/trained/iris/6" in "\n".join(helpers)


def _grpc_phase(fakes, events: str) -> subprocess.CompletedProcess:
    """Runs the gRPC-only step with curl answering predictions 200 and status version 4, and a
    kubectl that names one target Deployment and prints `events` for the Canary's events."""
    (fakes.bin / "curl").write_text(
        FAKE.replace(
            'stdout_var="FAKE_STDOUT_$tool"',
            'case "$*" in *:predict*) printf 200; exit 0 ;; esac\nstdout_var="FAKE_STDOUT_$tool"',
        )
    )
    (fakes.bin / "kubectl").write_text(
        FAKE.replace(
            'stdout_var="FAKE_STDOUT_$tool"',
            'case "$*" in *"get deployments -l app=iris -o name"*) printf deployment.apps/iris-deployment-1a2b;'
            ' exit 0 ;; *"get events"*) printf "%s" "$FAKE_EVENTS"; exit 0 ;; esac\nstdout_var="FAKE_STDOUT_$tool"',
        )
    )
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
flagger_rolls_back_a_grpc_only_failure
"""
    status = '{"model_version_status": [{"version": "4", "state": "AVAILABLE"}]}'
    return fakes.run(script, timeout=300, FAKE_STDOUT_curl=status, FAKE_EVENTS=events)


def test_a_release_broken_only_on_grpc_is_awaited_to_be_rolled_back_by_the_grpc_check(fakes):
    """Written for a machine with Docker: the good version served and promoted again, the target's
    gRPC port moved by a guarded JSON patch, Flagger's rollback awaited, and its events must name
    the grpc-predict webhook."""
    events = "New revision detected\nHalt iris.models-flagger advancement external check grpc-predict failed 500\n"
    result = _grpc_phase(fakes, events)
    assert result.returncode == 0, result.stderr
    calls = fakes.calls()
    steps = [
        "serve iris --env kind --version 4",
        "pulumi up --stack kind-flagger",
        "--expect promoted",
        "kubectl --context kind-model-serving-e2e -n models-flagger get deployments -l app=iris -o name",
        "kubectl --context kind-model-serving-e2e -n models-flagger patch deployment.apps/iris-deployment-1a2b",
        "--expect failed",
        "kubectl --context kind-model-serving-e2e -n models-flagger get events",
    ]
    positions = [next(i for i, c in enumerate(calls) if step in c) for step in steps]
    assert positions == sorted(positions), calls
    patch = next(c for c in calls if " patch " in c)
    assert '"op": "test", "path": "/spec/template/spec/containers/0/args/0", "value": "--port=8500"' in patch
    assert '"value": "--port=8502"' in patch


def test_a_rollback_not_caused_by_the_grpc_check_fails_the_step(fakes):
    result = _grpc_phase(fakes, "Halt iris.models-flagger advancement success-rate 0 < 99.5\n")
    assert result.returncode == 1
    assert "not on the grpc-predict check" in result.stderr


@pytest.mark.parametrize("stack", ["kind-flagger"])
def test_the_grpc_break_patch_matches_the_rendered_target(runs, stack):
    """The e2e's JSON patch assumes the serving container first and `--port=8500` its first argument."""
    (target,) = [
        r.object
        for r in runs[stack].kubernetes_objects()
        if r.type == "kubernetes:apps/v1:Deployment" and r.name == "iris-deployment"
    ]
    (container, *_) = target["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "--port=8500"
    assert "GRPC_BREAK_PATCH" in E2E.read_text() and "main" in E2E.read_text()


# A fake curl for the pool step: predictions of both models answer $FAKE_PREDICT (default 200),
# taxi-fare's $FAKE_PEER_PREDICT once the bump's `pulumi up` ran; the status of iris is version 4
# until that second `pulumi up --stack kind-pools`, 5 after; taxi-fare's is always 4.
POOL_CURL = FAKE.replace(
    'stdout_var="FAKE_STDOUT_$tool"',
    """ups=$(grep -c '^pulumi up --stack kind-pools' "$FAKE_LOG" || true)
case "$*" in
    *"/v1/models/taxi-fare:predict"*)
        if ((ups >= 2)); then printf '%s' "${FAKE_PEER_PREDICT:-200}"; else printf 200; fi
        exit 0 ;;
    *":predict"*) printf 200; exit 0 ;;
    *"/v1/models/iris") version=4; if ((ups >= 2)); then version=5; fi ;;
    *"/v1/models/taxi-fare") version=4 ;;
esac
if [[ -n "${version:-}" ]]; then
    printf '{"model_version_status": [{"version": "%s", "state": "AVAILABLE"}]}' "$version"
    exit 0
fi
stdout_var="FAKE_STDOUT_$tool\"""",
)
POOL_OUTPUT = '{\n  "shared-0": [\n    "iris",\n    "taxi-fare"\n  ]\n}\n'


def _pool_step(fakes, **env: str) -> subprocess.CompletedProcess:
    (fakes.bin / "curl").write_text(POOL_CURL)
    script = f"""WORK="{fakes.tmp}"; PROJECT="{fakes.tmp}/project"; FIRST=4; SECOND=5
setup_logs
git init -q "$PROJECT"
pool_serves_two_models_and_bumps_one
"""
    defaults = {
        "FAKE_STDOUT_kubectl": "service/envoy\n",
        "FAKE_STDOUT_pulumi": POOL_OUTPUT,
        "FAKE_SLEEP": "pulumi up --stack kind-pools*",
        "FAKE_SLEEP_SECONDS": "1",
    }
    return fakes.run(script, timeout=300, **(defaults | env))


def test_the_pool_step_serves_both_models_from_one_pool_and_bumps_one_under_traffic(fakes):
    """Written for a machine with Docker: the kind stack goes, taxi-fare is trained and published,
    both models are served in the kind-pools environment, the pool stack comes up and its `pools`
    output must put both in one shard; then iris is bumped under a request loop per model."""
    result = _pool_step(fakes)
    assert result.returncode == 0, result.stderr
    calls = fakes.calls()
    steps = [
        "pulumi destroy --stack kind --yes",
        "train taxi-fare --version 4",
        "publish taxi-fare",
        "serve iris --env kind-pools --version 4",
        "serve taxi-fare --env kind-pools --version 4",
        "kubectl --context kind-model-serving-e2e -n models-pools create secret tls models-kind-tls",
        "pulumi up --stack kind-pools",
        "pulumi stack output pools --stack kind-pools --json",
        "owning-gateway-namespace=models-pools",
        "serve iris --env kind-pools --version 5",
        "pulumi destroy --stack kind-pools --yes",
    ]
    positions = [next(i for i, c in enumerate(calls) if step in c) for step in steps]
    assert positions == sorted(positions), calls
    assert any("publish taxi-fare" in c and "--stack kind-pools --version 4" in c for c in calls)
    ups = [i for i, c in enumerate(calls) if c.startswith("pulumi up --stack kind-pools")]
    assert len(ups) == 2 and positions[-2] < ups[1] < positions[-1], "the bump's up, after the edit"
    # Both loops ran during the bump, on their own model's path, and every request answered 200.
    for model in ("iris", "taxi-fare"):
        requests = (fakes.logs / f"requests-pool-{model}.txt").read_text().splitlines()
        assert requests and set(requests) == {"200"}, model
        assert any(f"/v1/models/{model}:predict" in c for c in calls[ups[1] :])
    log = (fakes.logs / "e2e.log").read_text()
    assert "pool shared-0 serves iris and taxi-fare" in log
    assert "iris: serving version 5 through the Gateway" in log
    assert log.rindex("taxi-fare: serving version 4") > log.index("iris: serving version 5")


def test_a_failed_request_of_the_co_tenant_during_the_bump_fails_the_pool_step(fakes):
    result = _pool_step(fakes, FAKE_PEER_PREDICT="503")
    assert result.returncode == 1
    log = (fakes.logs / "e2e.log").read_text()
    assert "co-tenant" in log and "failed" in log
    assert set((fakes.logs / "requests-pool-iris.txt").read_text().splitlines()) == {"200"}
    assert "503" in (fakes.logs / "requests-pool-taxi-fare.txt").read_text().splitlines()


def test_the_pool_step_requires_both_models_in_one_shard(fakes):
    result = _pool_step(fakes, FAKE_STDOUT_pulumi='{"shared-0": ["iris"]}')
    assert result.returncode == 1
    assert "expected iris and taxi-fare in pool shared-0" in result.stderr
    assert not any("--version 5" in c for c in fakes.calls()), "no bump without the pool"


def test_main_runs_the_pool_step_between_the_rollback_and_flagger():
    text = E2E.read_text()
    body = text.split("\nmain() {", 1)[1]
    order = ["rollback ||", "pool_serves_two_models_and_bumps_one ||", "flagger_rolls_back_a_failing_version ||"]
    assert [body.index(step) for step in order] == sorted(body.index(step) for step in order)


def test_the_pool_stack_plans_both_models_into_one_pool_shard(runs):
    """What the pool step deploys, offline: one ServingPool `shared-0` serving iris and taxi-fare,
    no workload or Service of either model's own, both routes to the pool's Service, and a
    rolling update that never takes a serving pod away first."""
    from infra.spec.settings import load_stack_settings

    text = E2E.read_text()
    run = runs["kind-pools"]
    assert run.outputs["pools"] == {"shared-0": ["iris", "taxi-fare"]}
    assert "POOLS_STACK=kind-pools" in text and "POOL_SHARD=shared-0 " in text and "PEER=taxi-fare " in text
    objects = run.kubernetes_objects()
    (deployment,) = [r for r in objects if r.type == "kubernetes:apps/v1:Deployment"]
    assert deployment.name == "shared-0-deployment"
    assert deployment.object["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    services = [r.object["metadata"]["name"] for r in objects if r.type == "kubernetes:core/v1:Service"]
    assert services == ["shared-0"], "the members have no Service of their own"
    routes = [r for r in objects if r.type.endswith(":HTTPRoute")]
    assert sorted(r.name for r in routes) == ["iris-route", "taxi-fare-route"]
    for route in routes:
        (rule,) = route.object["spec"]["rules"]
        assert [b["name"] for b in rule["backendRefs"]] == ["shared-0"]
    settings = load_stack_settings(ROOT, "kind-pools")
    assert settings.environment == "kind-pools" and settings.namespace == "models-pools"
    assert settings.kubernetes.context == "kind-model-serving-e2e"
    assert settings.routing.host == "models.kind.localtest.me"
    assert settings.object_store.external_endpoint == "http://127.0.0.1:19000"
    assert settings.object_store.bucket == load_stack_settings(ROOT, "kind").object_store.bucket, (
        "iris's versions are published with --stack kind"
    )
    assert {(e.kind.value, e.name, e.namespace) for e in settings.external} == {
        ("Secret", settings.routing.tls_secret_name, "models-pools"),
        ("Secret", settings.object_store.credentials_secret, "models-pools"),
    }, "the script creates exactly these"
    assert 'install_prerequisites "$POOLS_STACK" "$POOLS_NAMESPACE"' in text and "POOLS_NAMESPACE=models-pools" in text


def test_the_scripts_prediction_bodies_are_the_manifests_examples():
    import json
    import re

    from infra.spec.manifest import load_manifests

    text = E2E.read_text()
    examples = {m.name: m.serving.example_request for m in load_manifests(ROOT)}
    for variable, model in (("PREDICT_BODY", "iris"), ("PEER_PREDICT_BODY", "taxi-fare")):
        (body,) = re.findall(rf"^{variable}='(.*)'$", text, re.MULTILINE)
        assert json.loads(body) == examples[model], model


def test_every_wait_of_the_script_is_bounded():
    text = E2E.read_text()
    assert "rollout status deployment/minio --timeout" in text
    assert 'kind create cluster --name "$CLUSTER"' in text and 'bounded "$CLUSTER_SECONDS"' in text
    assert 'bounded "$UP_SECONDS" pulumi' in text
    # Every `while` ends at a deadline: in its condition, or (`while :`) in its body.
    blocks = text.split("\n")
    loops = [i for i, line in enumerate(blocks) if line.strip().startswith(("while ", "until "))]
    assert len(loops) >= 4
    for i in loops:
        header = blocks[i].strip()
        if "deadline" in header:
            continue
        assert header == "while :; do", header
        body = "\n".join(blocks[i + 1 :]).split("\n    done", 1)[0]
        assert "SECONDS < deadline" in body, f"an unbounded loop: {header}{body[:200]}"


def test_the_kind_stacks_and_the_script_agree():
    from infra.spec.settings import load_stack_settings

    text = E2E.read_text()
    for stack, variable, namespace in (
        ("kind", "STACK", "models"),
        ("kind-flagger", "FLAGGER_STACK", "models-flagger"),
    ):
        settings = load_stack_settings(ROOT, stack)
        assert settings.kubernetes.context == "kind-model-serving-e2e"
        assert settings.environment == "kind" and settings.namespace == namespace
        assert settings.routing.host == "models.kind.localtest.me"
        assert settings.object_store.external_endpoint == "http://127.0.0.1:19000"
        assert f'install_prerequisites "${variable}" {namespace} ' in text
        assert f"forward_gateway {namespace} " in text
        external = {(e.kind.value, e.name, e.namespace) for e in settings.external}
        assert external == {
            ("Secret", settings.routing.tls_secret_name, namespace),
            ("Secret", settings.object_store.credentials_secret, namespace),
        }, "the script creates exactly these"
    assert "STORE_PORT=19000" in text and "HOST=models.kind.localtest.me" in text
    config = yaml.safe_load((ROOT / "scripts" / "e2e" / "kind-config.yaml").read_text())
    (node,) = config["nodes"]
    assert node["image"].startswith("kindest/node:v1.") and "@sha256:" in node["image"]


def test_minio_manifest_is_valid_and_matches_the_stacks_in_cluster_store():
    import kubernetes_validate

    from infra.spec.settings import load_stack_settings

    documents = list(yaml.safe_load_all((ROOT / "scripts" / "e2e" / "minio.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    store = load_stack_settings(ROOT, "kind").object_store
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == store.in_cluster.namespace
    assert store.in_cluster.pod_selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [store.in_cluster.port]
    service = next(d for d in documents if d["kind"] == "Service")
    assert f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:9000" == (
        store.endpoint
    )
    assert "@sha256:" in container["image"] or container["image"].rsplit(":", 1)[1].startswith("RELEASE.")


def test_make_e2e_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\ne2e:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/e2e/e2e.sh" in target


def test_serve_sets_the_stable_version_of_the_environment(tmp_path):
    from scripts.e2e.helpers import main

    project = copy_project(tmp_path / "project")
    assert main(["--root", str(project), "serve", "iris", "--env", "kind", "--version", "2"]) == 0
    manifest = yaml.safe_load((project / "models" / "iris.yaml").read_text())
    assert manifest["environments"]["kind"]["stable"] == 2


@pytest.mark.slow
def test_the_broken_model_loads_and_fails_every_prediction(tmp_path):
    import tensorflow as tf

    from infra.spec.manifest import load_manifests
    from scripts.e2e.helpers import BROKEN_MESSAGE, break_model
    from scripts.training.recipes import recipe_for
    from scripts.training.savedmodel import load_signature, predict, rest_request
    from scripts.training.train import train

    manifest = next(m for m in load_manifests(ROOT) if m.name == "iris")
    trained = train(manifest, recipe_for("iris"), 1, tmp_path / "trained")
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    good = load_signature(trained.path, "serving_default")
    assert predict(good, rest_request("serving_default", good, [row]))["species"]

    broken_path = tmp_path / "trained" / "iris" / "2"
    break_model(trained.path, broken_path, "serving_default")
    broken = load_signature(broken_path, "serving_default")  # loads, with the same signature
    assert sorted(broken.structured_outputs) == sorted(good.structured_outputs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=BROKEN_MESSAGE):
        predict(broken, rest_request("serving_default", broken, [row]))
    assert (broken_path / "metrics.json").read_text() == (trained.path / "metrics.json").read_text()
    shutil.rmtree(tmp_path / "trained")
