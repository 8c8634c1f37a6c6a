"""Train, publish, verify, promote, roll back: against a real S3 server on loopback and real SavedModels."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pulumi
import pytest
import yaml

from infra import program
from infra.offline import OfflineRun, run_stack
from infra.platform.object_store import CHECKSUMS_FILE, CLAIM_FILE, COMMIT_MARKER, StoreError, version_prefix
from scripts.modelctl import manifest_edit
from scripts.modelctl.cli import main
from scripts.modelctl.localstore import TEST_CREDENTIALS
from scripts.modelctl.promote import PromotionError, promote
from scripts.modelctl.publish import publish_model
from scripts.training import savedmodel
from scripts.training.recipes import recipe_for
from scripts.training.train import train
from tests.conftest import copy_project, edit_yaml
from tests.faultproxy import FaultProxy

BUCKET = "models-test"
PREFIX = "serving"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two real iris SavedModels (versions 1 and 2), trained once for the module."""
    from infra.spec.manifest import load_manifests
    from tests.conftest import ROOT

    out = tmp_path_factory.mktemp("trained")
    manifest = next(m for m in load_manifests(ROOT) if m.name == "iris")
    for version in (1, 2):
        train(manifest, recipe_for("iris"), version, out)
    return out / "iris"


@pytest.fixture
def credentials(monkeypatch):
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def point_stacks_at(root: Path, endpoint: str) -> None:
    """Every stack of the throwaway project uses the test store."""
    for stack in root.glob("stacks/Pulumi.*.yaml"):

        def change(document):
            store = document["config"]["model-serving:objectStore"]
            store.update({"endpoint": endpoint, "bucket": BUCKET, "prefix": PREFIX, "region": "us-east-1"})
            # An in-cluster store (staging's MinIO) becomes the loopback one too: plain http,
            # reached at `endpoint` from here, so no CA bundle and no separate outside URL.
            store.pop("caBundle", None)
            store.pop("externalEndpoint", None)

        edit_yaml(stack, change)


@pytest.fixture
def store(s3_server, credentials):
    client = s3_server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) if _has_bucket(client) else []:
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    if not _has_bucket(client):
        client.create_bucket(Bucket=BUCKET)
    return client


def _has_bucket(client) -> bool:
    return BUCKET in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.fixture
def repo(tmp_path, s3_server, store) -> Path:
    """A git repository of the project whose stacks all use the test store."""
    root = copy_project(tmp_path / "repo")
    point_stacks_at(root, s3_server.endpoint)
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@e", *command], check=True)
    return root


def keys(client, version: int, path: str = "iris") -> dict[str, bytes]:
    prefix = version_prefix(PREFIX, path, version)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def changed_lines(before: str, after: str) -> list[str]:
    """The added and removed lines of a unified diff: what a pull request would show."""
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines())
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]


def git_commit(root: Path, message: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", message], check=True
    )


# Training and the SavedModel -------------------------------------------------------------------


def test_training_exports_a_savedmodel_that_serves_through_its_signature(trained):
    version = trained / "1"
    assert (version / "saved_model.pb").is_file()
    metrics = yaml.safe_load((version / "metrics.json").read_text())
    assert 0.5 < metrics["accuracy"] <= 1.0
    card = yaml.safe_load((version / "model_card.json").read_text())
    assert card["intended_use"] and card["training_rows"] == 120 and card["evaluation_rows"] == 30
    signature = savedmodel.load_signature(version, "serving_default")
    rows = [
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
    ]
    request = savedmodel.rest_request("serving_default", signature, rows)
    # The REST body's instances are keyed by the signature's inputs.
    assert request["signature_name"] == "serving_default"
    assert set(request["instances"][0]) == set(savedmodel.input_names(signature))
    prediction = savedmodel.predict(signature, request)
    assert prediction["species"] == ["setosa", "virginica"]
    assert all(abs(sum(p) - 1) < 1e-5 for p in prediction["scores"])


def test_training_refuses_to_overwrite_a_version(trained, capsys):
    code = main(["train", "iris", "--version", "1", "--out", str(trained.parent)])
    assert code == 1
    assert "exists; a trained version is never overwritten" in capsys.readouterr().err


def test_a_savedmodel_without_the_manifests_signature_is_refused(trained, repo, capsys):
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["serving"].update({"signature": "predict_species"}))
    assert main(["--root", str(repo), "publish", "iris", str(trained / "1"), "--stack", "prod", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no signature 'predict_species' (the manifest's serving.signature); it has: serving_default" in err


# Publishing ------------------------------------------------------------------------------------


def test_publish_uploads_commits_and_records_a_minimal_manifest_diff(trained, repo, store, capsys):
    before = (repo / "models" / "iris.yaml").read_text()
    code = main(["--root", str(repo), "publish", "iris", str(trained / "1"), "--stack", "prod", "--quiet"])
    assert code == 0, capsys.readouterr().err
    objects = keys(store, 4)
    assert {COMMIT_MARKER, CHECKSUMS_FILE, CLAIM_FILE, "saved_model.pb", "metrics.json"} <= set(objects)
    manifest = manifest_edit.load(repo, "iris")
    digest = manifest.versions[4].digest
    assert manifest.versions[4].metrics["accuracy"] > 0.5
    assert yaml.safe_load(objects[COMMIT_MARKER])["digest"] == digest
    # Every uploaded file is listed, byte for byte.
    listed = dict(line.split("  ", 1)[::-1] for line in objects[CHECKSUMS_FILE].decode().splitlines())
    for relative in listed:
        assert (trained / "1" / relative).read_bytes() == objects[relative]
    diff = changed_lines(before, (repo / "models" / "iris.yaml").read_text())
    # The version, and its contract one tensor a line, so the pull request shows the interface.
    assert diff == [
        "+  4:",
        f"+    digest: {digest}",
        f"+    metrics: {{accuracy: {manifest.versions[4].metrics['accuracy']}}}",
        "+    contract:",
        "+      inputs:",
        "+        petal_length: {dtype: float32, shape: [-1]}",
        "+        petal_width: {dtype: float32, shape: [-1]}",
        "+        sepal_length: {dtype: float32, shape: [-1]}",
        "+        sepal_width: {dtype: float32, shape: [-1]}",
        "+      outputs:",
        "+        classes: {dtype: string, shape: [-1, 3]}",
        "+        scores: {dtype: float32, shape: [-1, 3]}",
        "+        species: {dtype: string, shape: [-1]}",
    ]
    assert manifest.versions[4].contract == manifest.versions[3].contract
    # TF-Serving's warmup requests were written into the SavedModel and published with it.
    assert "assets.extra/tf_serving_warmup_requests" in objects
    # The version verifies against the store.
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 4}))
    capsys.readouterr()
    assert main(["--root", str(repo), "plan", "--stack", "prod", "--check-artifacts"]) == 1
    err = capsys.readouterr().err
    assert "iris version 4" not in err, "the published version verifies"
    assert "model taxi-fare version 2: s3://models-test/serving/pricing/taxi-fare/2/_COMMITTED: not committed" in err


def test_publishing_an_existing_version_fails_and_leaves_it_intact(trained, repo, store, capsys):
    assert main(["--root", str(repo), "publish", "iris", str(trained / "1"), "--stack", "prod", "--quiet"]) == 0
    stored, manifest_text = keys(store, 4), (repo / "models" / "iris.yaml").read_text()
    # Named explicitly: the manifest refuses first.
    assert main(["--root", str(repo), "publish", "iris", str(trained / "2"), "--stack", "prod", "--version", "4"]) == 1
    assert "version 4 is already published; versions are immutable" in capsys.readouterr().err
    # The manifest forgot it (a reverted commit): the store still refuses.
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "models/iris.yaml"], check=True)
    assert main(["--root", str(repo), "publish", "iris", str(trained / "2"), "--stack", "prod", "--quiet"]) == 1
    assert "serving/iris/4/ is already committed; versions are immutable" in capsys.readouterr().err
    assert keys(store, 4) == stored
    (repo / "models" / "iris.yaml").write_text(manifest_text)


def test_concurrent_publishes_of_one_version_commit_exactly_one(trained, repo, store):
    results: dict[str, object] = {}

    def attempt(name: str, source: Path) -> None:
        try:
            results[name] = publish_model(repo, "iris", source, "prod", version=7, progress=False)
        except StoreError as exc:
            results[name] = exc

    threads = [threading.Thread(target=attempt, args=(n, trained / v)) for n, v in (("a", "1"), ("b", "2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results.values() if not isinstance(r, StoreError)]
    losers = [r for r in results.values() if isinstance(r, StoreError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "another publish holds this version" in str(losers[0])
    stored = keys(store, 7)
    import hashlib

    assert "sha256:" + hashlib.sha256(stored[CHECKSUMS_FILE]).hexdigest() == winners[0].digest


def test_an_upload_error_leaves_nothing_committed_and_a_retry_succeeds(trained, repo, store, s3_server, capsys):
    proxy = FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])).start()
    try:
        point_stacks_at(repo, proxy.endpoint)
        proxy.deny_puts = re.compile(r"/variables/")
        assert main(["--root", str(repo), "publish", "iris", str(trained / "1"), "--stack", "prod", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "/variables/variables." in err and "cannot write: AccessDenied" in err
        assert "version 4 was not committed" in err
        assert "Traceback" not in err
        assert proxy.denied
        assert keys(store, 4) == {}, "nothing left behind, the claim released"
        assert 4 not in manifest_edit.load(repo, "iris").versions
        proxy.deny_puts = None
        assert main(["--root", str(repo), "publish", "iris", str(trained / "1"), "--stack", "prod", "--quiet"]) == 0
        assert COMMIT_MARKER in keys(store, 4)
    finally:
        proxy.stop()


def test_a_publish_cut_off_mid_upload_can_be_taken_over(trained, repo, store, s3_server, tmp_path, capsys):
    big = tmp_path / "big-model"
    shutil.copytree(trained / "1", big)
    (big / "assets").mkdir(exist_ok=True)
    (big / "assets" / "vocabulary.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart
    proxy = FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])).start()
    try:
        point_stacks_at(repo, proxy.endpoint)
        proxy.cut_after_bytes = 10 * 1024 * 1024  # the store goes away half-way
        assert main(["--root", str(repo), "publish", "iris", str(big), "--stack", "prod", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "version 4 was not committed; once no other publish of it runs, retry with --takeover" in err
        assert not proxy.running
        stored = keys(store, 4)
        assert COMMIT_MARKER not in stored and CLAIM_FILE in stored, "a stale claim, no commit"
        proxy.start()  # the store is back
        assert main(["--root", str(repo), "publish", "iris", str(big), "--stack", "prod", "--quiet"]) == 1
        assert "another publish holds this version" in capsys.readouterr().err
        code = main(["--root", str(repo), "publish", "iris", str(big), "--stack", "prod", "--takeover", "--quiet"])
        assert code == 0, capsys.readouterr().err
        stored = keys(store, 4)
        assert stored["assets/vocabulary.bin"] == (big / "assets" / "vocabulary.bin").read_bytes()
    finally:
        proxy.stop()


# Artifact checks -------------------------------------------------------------------------------


def publish_and_serve(repo: Path, trained: Path, version: int = 4) -> str:
    publish_model(repo, "iris", trained / "1", "prod", progress=False)
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": version}))
    return manifest_edit.load(repo, "iris").versions[version].digest


def test_a_corrupted_checksum_list_is_caught_by_the_digest_check(trained, repo, store, capsys):
    publish_and_serve(repo, trained)
    key = version_prefix(PREFIX, "iris", 4) + CHECKSUMS_FILE
    store.put_object(Bucket=BUCKET, Key=key, Body=b"0" * 64 + b"  saved_model.pb\n")
    capsys.readouterr()
    assert main(["--root", str(repo), "plan", "--stack", "prod", "--check-artifacts"]) == 1
    err = capsys.readouterr().err
    assert f"model iris version 4: s3://{BUCKET}/{key}: digest is sha256:" in err and "the manifest says" in err


def test_the_program_verifies_artifacts_before_declaring_anything(trained, repo, store):
    digest = publish_and_serve(repo, trained)
    edit_yaml(repo / "models" / "taxi-fare.yaml", lambda d: d["environments"].pop("prod"))
    declared = OfflineRun(stack="prod")
    run_stack(repo, "prod", entry=program.main, into=declared)
    assert any(r.name == "iris-deployment" for r in declared.resources)
    # A served version that is not in the store: an error naming model, version and key; nothing declared.
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 3}))
    declared = OfflineRun(stack="prod")
    with pytest.raises(pulumi.RunError):
        run_stack(repo, "prod", entry=program.main, into=declared)
    assert declared.resources == []
    assert digest.startswith("sha256:")


# Promotion and rollback ------------------------------------------------------------------------


def set_metric(repo: Path, version: int, value: float) -> None:
    """Through the round-trip editor, so the file keeps its layout and diffs stay readable."""
    manifest_edit.edit(repo, "iris", lambda d: d["versions"][version]["metrics"].update({"accuracy": value}))


def test_promotion_gate(trained, repo, store, capsys):
    publish_model(repo, "iris", trained / "1", "prod", progress=False)  # version 4
    publish_model(repo, "iris", trained / "2", "prod", progress=False)  # version 5
    git_commit(repo, "publish 4 and 5")
    set_metric(repo, 2, 0.90)  # prod's champion
    set_metric(repo, 4, 0.88)  # worse
    set_metric(repo, 5, 0.904)  # better, but within min_delta 0.005
    before = (repo / "models" / "iris.yaml").read_text()
    with pytest.raises(PromotionError, match=r"improvement -0.02 .* fails"):
        promote(repo, "iris", "prod", 4)
    with pytest.raises(PromotionError, match=r"improvement \+0.004 .* fails"):
        promote(repo, "iris", "prod", 5)
    assert (repo / "models" / "iris.yaml").read_text() == before, "a refused promotion edits nothing"
    set_metric(repo, 5, 0.95)
    before = (repo / "models" / "iris.yaml").read_text()
    assert main(["--root", str(repo), "promote", "iris", "--env", "prod"]) == 0
    out = capsys.readouterr().out
    assert "candidate v5: accuracy = 0.95\nchampion v2: accuracy = 0.9" in out and "passes" in out
    changed = changed_lines(before, (repo / "models" / "iris.yaml").read_text())
    assert changed == ["-    stable: 2", "+    stable: 5"]


def test_promotion_refuses_unpublished_and_uncommitted_versions(trained, repo, store, capsys):
    with pytest.raises(PromotionError, match="version 9 is not published"):
        promote(repo, "iris", "prod", 9)
    # Version 3 is in the manifest, but not in this store.
    set_metric(repo, 3, 0.99)
    assert main(["--root", str(repo), "promote", "iris", "--env", "prod", "--version", "3"]) == 1
    err = capsys.readouterr().err
    assert re.search(
        rf"iris version 3 is not usable in stack (prod|eks): s3://{BUCKET}/serving/iris/3/_COMMITTED: not committed",
        err,
    )


def test_canary_promotion_sets_the_canary_label(trained, repo, store):
    publish_model(repo, "iris", trained / "2", "dev", progress=False)
    set_metric(repo, 4, 0.99)
    with pytest.raises(PromotionError, match="rolls versions out with Flagger"):
        promote(repo, "iris", "prod", 4, canary=True)
    with pytest.raises(PromotionError, match="routes by Ingress"):
        promote(repo, "iris", "staging", 4, canary=True)
    promote(repo, "iris", "dev", 4, canary=True, weight=25)
    served = manifest_edit.load(repo, "iris").environments["dev"]
    assert (served.stable, served.canary.version, served.canary.weight) == (3, 4, 25)
    assert "    canary: {version: 4, weight: 25}" in (repo / "models" / "iris.yaml").read_text()
    # Promoting the canary to stable ends the canary.
    set_metric(repo, 4, 0.999)
    promote(repo, "iris", "dev", 4)
    served = manifest_edit.load(repo, "iris").environments["dev"]
    assert (served.stable, served.canary) == (4, None)


def test_rollback_restores_the_previous_stable_version(trained, repo, store, capsys):
    publish_model(repo, "iris", trained / "1", "prod", progress=False)  # 4
    publish_model(repo, "iris", trained / "2", "staging", progress=False)  # 5
    assert main(["--root", str(repo), "rollback", "iris", "--env", "prod"]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    set_metric(repo, 4, 0.99)
    promote(repo, "iris", "prod", 4)
    git_commit(repo, "iris 4 to prod")
    before = (repo / "models" / "iris.yaml").read_text()
    assert main(["--root", str(repo), "rollback", "iris", "--env", "prod"]) == 1
    # Version 2, the previous stable, is not in this store: rollback refuses to serve it.
    assert re.search(r"iris version 2 is not usable in stack (prod|eks)", capsys.readouterr().err)
    assert (repo / "models" / "iris.yaml").read_text() == before
    # Serve 5, commit; rolling back brings 4 again.
    set_metric(repo, 5, 0.999)
    promote(repo, "iris", "prod", 5)
    git_commit(repo, "iris 5 to prod")
    before = (repo / "models" / "iris.yaml").read_text()
    assert main(["--root", str(repo), "rollback", "iris", "--env", "prod"]) == 0
    assert "stable 5 -> 4" in capsys.readouterr().out
    changed = changed_lines(before, (repo / "models" / "iris.yaml").read_text())
    assert changed == ["-    stable: 5", "+    stable: 4"]
