"""Waiting for Flagger's verdict: the decision over crafted objects, the polling loop, and the reader
against a fake Kubernetes API server on loopback."""

from __future__ import annotations

import re

import pytest

from scripts.modelctl.rollout import ClusterReader, Observation, Outcome, RolloutError, decide, wait_for_rollouts
from tests.fake_kubernetes import FakeKubernetes, canary, deployment

TARGET = "iris-deployment-1a2b3c4d"
PRIMARY = f"{TARGET}-primary"
# Revision 1 was promoted earlier; `pulumi up` has just applied revision 2 (a version bump:
# a new config hash and a new auto-named ConfigMap).
OLD_TARGET = deployment(TARGET, "hash-1", "iris-config-old")
NEW_TARGET = deployment(TARGET, "hash-2", "iris-config-new")
OLD_PRIMARY = deployment(PRIMARY, "hash-1", "iris-config-old-primary")
NEW_PRIMARY = deployment(PRIMARY, "hash-2", "iris-config-new-primary")


def observed(phase: str, primary: dict | None, tracked: list[str] | None = None, target: dict = NEW_TARGET):
    return Observation("iris", canary("iris", TARGET, phase, tracked, failed_checks=5), target, primary)


def test_promoted_when_succeeded_and_the_primary_serves_the_new_revision():
    verdict = decide(observed("Succeeded", NEW_PRIMARY, ["iris-config-new"]))
    assert verdict.outcome is Outcome.promoted and verdict.phase == "Succeeded"


def test_first_deployment_is_promoted_once_initialized():
    assert decide(observed("Initialized", NEW_PRIMARY)).outcome is Outcome.promoted
    assert decide(observed("Initializing", None)).outcome is Outcome.waiting


def test_the_previous_success_is_not_this_revisions():
    # Right after `pulumi up`: Flagger has not noticed the change; the phase and the Promoted
    # condition still say Succeeded, but the primary serves revision 1.
    verdict = decide(observed("Succeeded", OLD_PRIMARY, ["iris-config-old"]))
    assert verdict.outcome is Outcome.waiting
    assert "waiting for the primary to serve this revision" in verdict.detail


@pytest.mark.parametrize("phase", ["Progressing", "WaitingPromotion", "Promoting", "Finalising", "Waiting"])
def test_still_progressing(phase):
    assert decide(observed(phase, OLD_PRIMARY, ["iris-config-new"])).outcome is Outcome.waiting
    # Promoting copies the template before the phase says Succeeded: still waiting.
    assert decide(observed(phase, NEW_PRIMARY, ["iris-config-new"])).outcome is Outcome.waiting


def test_an_image_change_is_a_new_revision_too():
    new_image = deployment(TARGET, "hash-1", "iris-config-old", image="tensorflow/serving:2.20.0")
    verdict = decide(observed("Succeeded", OLD_PRIMARY, ["iris-config-old"], target=new_image))
    assert verdict.outcome is Outcome.waiting


def test_failed_analysis_of_this_revision_fails():
    verdict = decide(observed("Failed", OLD_PRIMARY, ["iris-config-new"]))
    assert verdict.outcome is Outcome.failed
    assert "failed after 5 failed check(s)" in verdict.detail and TARGET in verdict.detail


def test_an_earlier_revisions_failure_is_not_this_ones():
    # Revision 1 failed before; `pulumi up` applied a fix (revision 2, a new ConfigMap) that
    # Flagger has not picked up yet: keep waiting rather than fail the stage at once.
    verdict = decide(observed("Failed", OLD_PRIMARY, ["iris-config-old"]))
    assert verdict.outcome is Outcome.waiting
    # Without tracked configs the phase is all there is to go by.
    assert decide(observed("Failed", OLD_PRIMARY, None)).outcome is Outcome.failed


def test_missing_objects_keep_waiting():
    assert decide(Observation("iris", None)).outcome is Outcome.waiting
    no_target = Observation("iris", canary("iris", TARGET, "Initializing"), None, None)
    assert "no Deployment iris-deployment-1a2b3c4d yet" in decide(no_target).detail


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(timelines: dict[str, list[Observation]], timeout: float = 60.0):
    steps = dict.fromkeys(timelines, -1)

    def observe(model: str) -> Observation:
        steps[model] += 1
        return timelines[model][min(steps[model], len(timelines[model]) - 1)]

    clock, reported = FakeClock(), []
    verdicts = wait_for_rollouts(
        list(timelines), observe, timeout, poll_interval=10, report=reported.append, clock=clock, sleep=clock.sleep
    )
    return verdicts, reported, clock.now


def test_waits_until_every_model_is_promoted():
    iris = [
        observed("Succeeded", OLD_PRIMARY, ["iris-config-old"]),
        observed("Progressing", OLD_PRIMARY, ["iris-config-new"]),
        observed("Progressing", OLD_PRIMARY, ["iris-config-new"]),
        observed("Succeeded", NEW_PRIMARY, ["iris-config-new"]),
    ]
    verdicts, reported, elapsed = run({"iris": iris, "taxi-fare": [replace_model(iris[-1], "taxi-fare")]})
    assert [v.outcome for v in verdicts] == [Outcome.promoted, Outcome.promoted]
    # Each change is reported once: the repeated Progressing is not.
    assert [(v.model, v.phase) for v in reported] == [
        ("iris", "Succeeded"),
        ("taxi-fare", "Succeeded"),
        ("iris", "Progressing"),
        ("iris", "Succeeded"),
    ]
    assert elapsed == 30


def replace_model(observation: Observation, model: str) -> Observation:
    return Observation(model, observation.canary, observation.target, observation.primary)


def test_stops_at_the_first_failure():
    iris = [
        observed("Progressing", OLD_PRIMARY, ["iris-config-new"]),
        observed("Failed", OLD_PRIMARY, ["iris-config-new"]),
    ]
    verdicts, _, elapsed = run({"iris": iris})
    assert [v.outcome for v in verdicts] == [Outcome.failed] and elapsed == 10


def test_gives_up_at_the_timeout_with_the_last_phase():
    verdicts, _, elapsed = run({"iris": [observed("Progressing", OLD_PRIMARY, ["iris-config-new"])]}, timeout=25)
    (verdict,) = verdicts
    assert verdict.outcome is Outcome.waiting and verdict.phase == "Progressing"
    assert elapsed == 25  # the last sleep is cut to the deadline


@pytest.fixture
def fake_kubernetes():
    servers = []

    def start(timelines) -> FakeKubernetes:
        server = FakeKubernetes("models", timelines).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_reader_finds_the_canary_by_label_and_reads_both_deployments(fake_kubernetes, tmp_path):
    server = fake_kubernetes(
        {
            "iris": [
                {
                    "canary": canary("iris", TARGET, "Succeeded", ["iris-config-new"]),
                    "deployments": [NEW_TARGET, NEW_PRIMARY],
                }
            ]
        }
    )
    reader = ClusterReader("models", context="test", kubeconfig=str(server.kubeconfig(tmp_path / "kubeconfig", "test")))
    observation = reader("iris")
    assert observation.canary["status"]["phase"] == "Succeeded"
    assert (
        observation.target["spec"]["template"]["metadata"]["annotations"]
        == NEW_TARGET["spec"]["template"]["metadata"]["annotations"]
    )
    assert observation.primary["metadata"]["name"] == PRIMARY
    assert decide(observation).outcome is Outcome.promoted
    assert server.requests == [
        "/apis/flagger.app/v1beta1/namespaces/models/canaries?labelSelector=model-serving.dev%2Fmodel%3Diris",
        f"/apis/apps/v1/namespaces/models/deployments/{TARGET}",
        f"/apis/apps/v1/namespaces/models/deployments/{PRIMARY}",
    ]
    # A model without a Canary (yet), and a target without its primary (yet).
    assert reader("taxi-fare") == Observation("taxi-fare", None)


def test_reader_errors_are_one_line(fake_kubernetes, tmp_path):
    with pytest.raises(RolloutError, match="cannot use the kubeconfig"):
        ClusterReader("models", context="nowhere", kubeconfig=str(tmp_path / "missing"))
    server = FakeKubernetes("models", {})  # never started: nothing listens on its port
    config = str(server.kubeconfig(tmp_path / "kubeconfig", "test"))
    server.server_close()
    with pytest.raises(RolloutError, match="context 'other'"):
        ClusterReader("models", context="other", kubeconfig=config)
    with pytest.raises(RolloutError, match=re.escape("list canaries -l model-serving.dev/model=iris in models: ")):
        ClusterReader("models", context="test", kubeconfig=config)("iris")
