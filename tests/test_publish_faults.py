"""Publish against a real S3 server (moto) on loopback behind tests/faultproxy.py: lost replies,
connection resets, SlowDown and a slow racing publisher never leave a version half-done,
overwritten or unrecorded, and a loser is told plainly that it lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from infra.platform.object_store import (
    CHECKSUMS_FILE,
    CLAIM_FILE,
    COMMIT_MARKER,
    StoreError,
    verify_version,
    version_prefix,
)
from infra.spec.settings import load_stack_settings
from scripts.modelctl import manifest_edit, publish
from scripts.modelctl.cli import main
from scripts.modelctl.localstore import TEST_CREDENTIALS
from tests.conftest import copy_project, edit_yaml
from tests.faultproxy import FaultProxy

BUCKET = "models-publish-faults"
PREFIX = "serving"
VERSION = 4
FILES = {
    "saved_model.pb": b"\x08\x01" * 500,
    "variables/variables.index": b"index" * 20,
    # Big enough to be cut half-way, small enough to stay fast.
    "variables/variables.data-00000-of-00001": bytes(range(256)) * 1024,
    "fingerprint.pb": b"fp",
}
VERSION_PREFIX = version_prefix(PREFIX, "iris", VERSION)


@pytest.fixture
def store(s3_server, monkeypatch):
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = s3_server.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


@pytest.fixture
def proxy(s3_server):
    proxy = FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])).start()
    try:
        yield proxy
    finally:
        for fault in proxy.faults:
            fault.release.set()
        proxy.stop()


def set_endpoint(root: Path, endpoint: str, **fields: str) -> None:
    def change(document):
        document["config"]["model-serving:objectStore"].update(
            {"bucket": BUCKET, "prefix": PREFIX, "region": "us-east-1", "endpoint": endpoint} | fields
        )

    edit_yaml(root / "stacks" / "Pulumi.prod.yaml", change)


@pytest.fixture
def project(tmp_path, store, proxy, monkeypatch) -> Path:
    root = copy_project(tmp_path / "project")
    set_endpoint(root, proxy.endpoint)
    # The command reads the SavedModel's contract and writes its warmup with TensorFlow first;
    # not the point here: the fake SavedModel stands for version 3's export.
    contract = manifest_edit.load(root, "iris").versions[3].contract
    monkeypatch.setattr(publish, "prepare_savedmodel", lambda *_args: contract)
    return root


def savedmodel_at(directory: Path, variant: bytes = b"") -> Path:
    """A directory shaped like a SavedModel (publish never looks inside the files)."""
    for relative, body in FILES.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(body + variant)
    return directory


@pytest.fixture
def savedmodel(tmp_path) -> Path:
    return savedmodel_at(tmp_path / "savedmodel")


def run_publish(root: Path, directory: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--root", str(root), "publish", "iris", str(directory), "--stack", "prod", "--quiet", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


def recorded_digest(root: Path) -> str | None:
    version = manifest_edit.load(root, "iris").versions.get(VERSION)
    return version.digest if version else None


def assert_committed_once_and_correct(root: Path, store, directory: Path, integrity: str = "checksums") -> None:
    digest = recorded_digest(root)
    assert digest is not None, "the manifest records the version"
    assert verify_version(store, BUCKET, VERSION_PREFIX, digest, integrity) == []
    for relative in FILES:
        stored = store.get_object(Bucket=BUCKET, Key=VERSION_PREFIX + relative)["Body"].read()
        assert stored == (directory / relative).read_bytes()
    listed = [o["Key"] for o in store.list_objects_v2(Bucket=BUCKET, Prefix=VERSION_PREFIX)["Contents"]]
    assert sorted(listed) == sorted(VERSION_PREFIX + r for r in [*FILES, CHECKSUMS_FILE, COMMIT_MARKER, CLAIM_FILE])


def assert_every_write_conditional(proxy: FaultProxy) -> None:
    """Each PUT of an object (or claim rewrite) and each multipart completion carries a condition;
    UploadPart takes none (S3 User Guide, "Enforce conditional writes": CreateMultipartUpload,
    UploadPart and UploadPartCopy "don't accept conditional headers")."""
    writes = [(m, t, h) for m, t, h in proxy.requests if (m == "PUT") != ("uploadId=" in t)]
    assert writes
    unconditional = [t for _, t, h in writes if h.get("if-none-match") != "*" and "if-match" not in h]
    assert unconditional == [], "written without If-None-Match: *"


# Lost replies ------------------------------------------------------------------------------------

LOST_REPLY_WRITES = {
    "claim": (CLAIM_FILE, 0),
    "claim probe": (CLAIM_FILE, 1),  # the second, must-fail write of the claim
    "small data file": ("fingerprint.pb", 0),
    "large data file": ("variables/variables.data-00000-of-00001", 0),
    "checksum list": (CHECKSUMS_FILE, 0),
    "commit marker": (COMMIT_MARKER, 0),
}


@pytest.mark.parametrize("write", LOST_REPLY_WRITES, ids=list(LOST_REPLY_WRITES))
def test_a_lost_reply_on_any_write_is_recognised_and_publish_completes(
    project, savedmodel, store, proxy, capsys, write
):
    relative, skip = LOST_REPLY_WRITES[write]
    if skip:
        proxy.inject("hold", "PUT", f"/{VERSION}/{relative}$", times=skip).release.set()  # pass the first
    fault = proxy.inject("drop_reply", "PUT", f"/{VERSION}/{relative}$")
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 0, err
    assert fault.hits, "the store applied the write and its reply was lost"
    assert_committed_once_and_correct(project, store, savedmodel)
    assert_every_write_conditional(proxy)


def test_a_lost_reply_on_a_multipart_completion_is_recognised(project, savedmodel, store, proxy, capsys, monkeypatch):
    # Files over the single-PUT limit go up in parts, the condition on CompleteMultipartUpload
    # (boto3's transfer manager cannot send it); a smaller threshold stands for 5 GiB here.
    monkeypatch.setattr(publish, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    (savedmodel / "variables" / "variables.data-00000-of-00001").write_bytes(b"v" * (6 * 1024 * 1024))
    set_endpoint(project, proxy.endpoint, integrity="download")  # a multipart SHA-256 is not the file's
    fault = proxy.inject("drop_reply", "POST", r"/variables\.data-00000-of-00001\?uploadId=")
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 0, err
    assert fault.hits
    assert_committed_once_and_correct(project, store, savedmodel, integrity="download")
    assert_every_write_conditional(proxy)


def test_a_takeovers_lost_claim_rewrite_is_recognised(project, savedmodel, store, proxy, capsys):
    # A stale claim of an interrupted publish; the takeover's If-Match rewrite loses its reply.
    stale = json.dumps({"publisher": "interrupted", "started_at": "2026-01-01T00:00:00+00:00"}).encode()
    store.put_object(Bucket=BUCKET, Key=VERSION_PREFIX + CLAIM_FILE, Body=stale)
    store.put_object(Bucket=BUCKET, Key=VERSION_PREFIX + "saved_model.pb", Body=b"half")
    proxy.inject("hold", "PUT", f"/{VERSION}/{CLAIM_FILE}$").release.set()  # the first try, refused
    fault = proxy.inject("drop_reply", "PUT", f"/{VERSION}/{CLAIM_FILE}$")  # the If-Match rewrite
    code, err = run_publish(project, savedmodel, capsys, "--takeover")
    assert code == 0, err
    assert fault.hits
    assert any("if-match" in h for m, t, h in proxy.requests if t.endswith(CLAIM_FILE))
    assert_committed_once_and_correct(project, store, savedmodel)


def test_a_rerun_after_the_commit_replies_were_all_lost_records_the_version(project, savedmodel, store, proxy, capsys):
    # Every attempt at `_COMMITTED` loses its reply (botocore gives up after max_attempts): the
    # version is committed in the store; publish sees its own marker and succeeds.
    proxy.inject("drop_reply", "PUT", f"/{VERSION}/{COMMIT_MARKER}$", times=10)
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 0, err
    assert_committed_once_and_correct(project, store, savedmodel)


def test_a_rerun_over_its_own_committed_version_finishes_recording_it(project, savedmodel, store, capsys):
    # The first run committed and died before the manifest was written (or gave up on lost replies).
    settings = load_stack_settings(project, "prod")
    publish.Publisher(settings.object_store, manifest_edit.load(project, "iris")).publish(
        savedmodel, VERSION, progress=False
    )
    assert recorded_digest(project) is None
    capsys.readouterr()
    code = main(["--root", str(project), "publish", "iris", str(savedmodel), "--stack", "prod", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"iris version {VERSION} was already committed with this content; verified -> s3://")
    assert out.rstrip().endswith("recorded in models/iris.yaml")
    assert_committed_once_and_correct(project, store, savedmodel)


def test_a_rerun_with_other_content_over_a_committed_version_is_refused(project, savedmodel, store, tmp_path, capsys):
    settings = load_stack_settings(project, "prod")
    publish.Publisher(settings.object_store, manifest_edit.load(project, "iris")).publish(
        savedmodel, VERSION, progress=False
    )
    other = savedmodel_at(tmp_path / "other", b"!")
    code, err = run_publish(project, other, capsys, "--version", str(VERSION))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"serving/iris/{VERSION}/ is already committed; versions are immutable, publish a new one" in err
    assert recorded_digest(project) is None


# Resets and throttling ---------------------------------------------------------------------------


def test_a_connection_reset_mid_body_is_retried(project, savedmodel, store, proxy, capsys):
    fault = proxy.inject("reset_mid_body", "PUT", "/variables/variables.data-00000-of-00001$")
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 0, err
    assert fault.hits
    assert_committed_once_and_correct(project, store, savedmodel)
    assert_every_write_conditional(proxy)


def test_slow_down_on_several_requests_is_retried_within_the_bound(project, savedmodel, store, proxy, capsys):
    # The store client uses botocore's `standard` retry mode with max_attempts 3 (object_store.py,
    # s3_client): SlowDown is a throttling code there, so each request may be refused twice.
    faults = [
        proxy.inject("slow_down", "PUT", f"/{VERSION}/{CLAIM_FILE}$", times=2),
        proxy.inject("slow_down", "PUT", "/saved_model.pb$", times=2),
        proxy.inject("slow_down", "PUT", f"/{CHECKSUMS_FILE}$", times=1),
        proxy.inject("slow_down", "PUT", f"/{COMMIT_MARKER}$", times=2),
        proxy.inject("slow_down", "HEAD", "/fingerprint.pb", times=1),
    ]
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 0, err
    assert [len(f.hits) for f in faults] == [2, 2, 1, 2, 1]
    assert_committed_once_and_correct(project, store, savedmodel)
    assert_every_write_conditional(proxy)


def test_slow_down_beyond_the_bound_fails_plainly_and_leaves_nothing(project, savedmodel, store, proxy, capsys):
    proxy.inject("slow_down", "PUT", "/saved_model.pb$", times=10)
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "saved_model.pb: cannot write: SlowDown" in err and f"version {VERSION} was not committed" in err
    assert store.list_objects_v2(Bucket=BUCKET, Prefix=VERSION_PREFIX).get("Contents", []) == []


# A race ------------------------------------------------------------------------------------------


def test_a_slow_write_of_a_publisher_taken_over_cannot_overwrite_the_winner(
    project, savedmodel, store, proxy, s3_server, tmp_path, capsys
):
    held = proxy.inject("hold", "PUT", "/saved_model.pb$")
    outcome: dict[str, object] = {}

    def publisher_a() -> None:
        outcome["code"] = main(
            ["--root", str(project), "publish", "iris", str(savedmodel), "--stack", "prod", "--quiet"]
        )

    thread = threading.Thread(target=publisher_a)
    thread.start()
    assert held.held.wait(30), "A's data PUT reached the proxy"
    # B, straight to the store, takes the version over from the apparently stuck A and commits.
    direct = copy_project(tmp_path / "b")
    set_endpoint(direct, s3_server.endpoint)
    settings = load_stack_settings(direct, "prod")
    winner = publish.Publisher(settings.object_store, manifest_edit.load(direct, "iris"))
    other = savedmodel_at(tmp_path / "other", b"B")
    published = winner.publish(other, VERSION, takeover=True, progress=False)
    held.release.set()  # A's slow PUT lands now
    thread.join(60)
    err = capsys.readouterr().err
    assert outcome["code"] == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "internal error" not in err
    assert err.startswith(f"modelctl: model iris version {VERSION}: publisher {winner.publisher_id} committed it first")
    assert recorded_digest(project) is None
    # B's version is intact: A's late write was refused (If-None-Match), A removed only its own.
    assert verify_version(store, BUCKET, VERSION_PREFIX, published.digest) == []
    for relative in FILES:
        assert (
            store.get_object(Bucket=BUCKET, Key=VERSION_PREFIX + relative)["Body"].read()
            == (other / relative).read_bytes()
        )
    assert held.hits and any(
        h.get("if-none-match") == "*" for m, t, h in proxy.requests if m == "PUT" and t.endswith("/saved_model.pb")
    )


# Nothing half-done -------------------------------------------------------------------------------


def test_a_version_without_its_commit_marker_is_never_published(project, savedmodel, store, proxy, capsys):
    # Every attempt at the marker is reset before it reaches the store: nothing is committed.
    proxy.inject("reset_mid_body", "PUT", f"/{VERSION}/{COMMIT_MARKER}$", times=10)
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"version {VERSION} was not committed" in err
    assert recorded_digest(project) is None
    problems = verify_version(store, BUCKET, VERSION_PREFIX, "sha256:" + "0" * 64)
    assert [p.message for p in problems] == ["not committed: the commit marker is missing"]
    assert store.list_objects_v2(Bucket=BUCKET, Prefix=VERSION_PREFIX).get("Contents", []) == [], "cleaned up"
    proxy.faults.clear()
    # A stale, uncommitted version (the cleanup failed too) is not taken for a published one.
    for relative, body in FILES.items():
        store.put_object(Bucket=BUCKET, Key=VERSION_PREFIX + relative, Body=body)
    store.put_object(Bucket=BUCKET, Key=VERSION_PREFIX + CLAIM_FILE, Body=b'{"publisher": "gone"}')
    code, err = run_publish(project, savedmodel, capsys)
    assert code == 1 and "another publish holds this version" in err
    assert recorded_digest(project) is None
    code, err = run_publish(project, savedmodel, capsys, "--takeover")
    assert code == 0, err
    assert_committed_once_and_correct(project, store, savedmodel)
    assert_every_write_conditional(proxy)


def test_the_loser_of_a_claim_race_is_told_who_holds_it(project, savedmodel, store, capsys):
    store.put_object(
        Bucket=BUCKET,
        Key=VERSION_PREFIX + CLAIM_FILE,
        Body=b'{"publisher": "p-other"}',
        Metadata={"publisher": "p-other"},
    )
    with pytest.raises(StoreError, match=r'another publish holds this version \(\{"publisher": "p-other"\}'):
        settings = load_stack_settings(project, "prod")
        publish.Publisher(settings.object_store, manifest_edit.load(project, "iris")).publish(
            savedmodel, VERSION, progress=False
        )
