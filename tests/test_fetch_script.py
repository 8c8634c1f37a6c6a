"""The init container's fetch script, run with the aws CLI against a real S3 server on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra.model.fetch import fetch_script
from infra.platform.object_store import CHECKSUMS_FILE, COMMIT_MARKER, version_prefix
from scripts.modelctl.localstore import TEST_CREDENTIALS

SAVED_MODEL = {
    "saved_model.pb": b"\x08\x01graph-bytes",
    "fingerprint.pb": b"fingerprint",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": os.urandom(4096),
}


def checksum_list(files: dict[str, bytes]) -> bytes:
    """`sha256sum` format: '<hex>  <path>' per file, sorted by path."""
    return "".join(f"{hashlib.sha256(files[p]).hexdigest()}  {p}\n" for p in sorted(files)).encode()


@pytest.fixture
def store(s3_server):
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)

    def put_version(version: int, files=SAVED_MODEL, listed=SAVED_MODEL, commit=True) -> str:
        prefix = version_prefix("serving", "iris", version)
        for path, body in files.items():
            client.put_object(Bucket=bucket, Key=prefix + path, Body=body)
        checksums = checksum_list(listed)
        client.put_object(Bucket=bucket, Key=prefix + CHECKSUMS_FILE, Body=checksums)
        if commit:
            client.put_object(Bucket=bucket, Key=prefix + COMMIT_MARKER, Body=b"")
        return "sha256:" + hashlib.sha256(checksums).hexdigest()

    return s3_server, bucket, put_version


def fetch(
    s3_server, bucket: str, model_dir: Path, *specs: str, tmp: Path, stubs: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the script; commands in `stubs` come first on PATH."""
    script = tmp / "fetch-models.sh"
    script.write_text(fetch_script())
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {
        "PATH": f"{stubs}:{path}" if stubs else path,
        "HOME": str(tmp),
        "MODEL_SOURCE": f"s3://{bucket}/serving/iris",
        "MODEL_DIR": str(model_dir),
        "S3_ENDPOINT": s3_server.endpoint,
        **TEST_CREDENTIALS,
    }
    if shutil.which("aws", path=env["PATH"]) is None:
        pytest.fail("the aws CLI is not installed (requirements-dev.txt)")
    return subprocess.run(["/bin/sh", str(script), *specs], env=env, capture_output=True, text=True, timeout=120)


def test_fetches_and_verifies_exactly_the_named_versions(store, tmp_path):
    server, bucket, put_version = store
    digests = {v: put_version(v) for v in (1, 2, 3)}
    model_dir = tmp_path / "models" / "iris"
    result = fetch(server, bucket, model_dir, f"1={digests[1]}", f"3={digests[3]}", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "3"]
    for version in (1, 3):
        for path, body in SAVED_MODEL.items():
            assert (model_dir / str(version) / path).read_bytes() == body
    assert f"version 3 verified ({digests[3]})" in result.stdout


def test_refuses_a_digest_other_than_the_manifests(store, tmp_path):
    server, bucket, put_version = store
    put_version(1)
    wrong = "sha256:" + "0" * 64
    result = fetch(server, bucket, tmp_path / "m", f"1={wrong}", tmp=tmp_path)
    assert result.returncode == 1
    assert f"the manifest says {wrong}" in result.stderr
    assert not (tmp_path / "m" / "1").exists()


def test_refuses_a_file_that_does_not_match_the_checksum_list(store, tmp_path):
    server, bucket, put_version = store
    tampered = dict(SAVED_MODEL, **{"saved_model.pb": b"tampered"})
    digest = put_version(1, files=tampered, listed=SAVED_MODEL)
    result = fetch(server, bucket, tmp_path / "m", f"1={digest}", tmp=tmp_path)
    assert result.returncode == 1
    assert "a file does not match" in result.stderr
    assert not (tmp_path / "m" / "1").exists()


def test_refuses_files_the_checksum_list_does_not_cover(store, tmp_path):
    server, bucket, put_version = store
    extra = dict(SAVED_MODEL, **{"assets/injected.txt": b"not published"})
    digest = put_version(1, files=extra, listed=SAVED_MODEL)
    result = fetch(server, bucket, tmp_path / "m", f"1={digest}", tmp=tmp_path)
    assert result.returncode == 1
    assert "files differ" in result.stderr


def test_refuses_a_version_without_its_commit_marker(store, tmp_path):
    server, bucket, put_version = store
    digest = put_version(1, commit=False)
    result = fetch(server, bucket, tmp_path / "m", f"1={digest}", tmp=tmp_path)
    assert result.returncode == 1
    assert "version 1 is not committed" in result.stderr
    assert not (tmp_path / "m" / "1").exists()


def stub_sha256sum(tmp: Path, body: str) -> Path:
    """A directory holding a `sha256sum` that runs `body` instead of hashing."""
    stubs = tmp / "stubs"
    stubs.mkdir()
    (stubs / "sha256sum").write_text(f"#!/bin/sh\n{body}\n")
    (stubs / "sha256sum").chmod(0o755)
    return stubs


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('echo "sha256sum: not found" >&2; exit 127', "sha256sum failed"),
        ("echo 'hash-of-nothing  -'", "not 64 hex digits"),
        ("exit 0", "not 64 hex digits"),
    ],
    ids=["fails", "prints-garbage", "prints-nothing"],
)
def test_says_so_when_hashing_fails_instead_of_reporting_an_empty_digest(store, tmp_path, body, reason):
    server, bucket, put_version = store
    digest = put_version(1)
    stubs = stub_sha256sum(tmp_path, body)
    result = fetch(server, bucket, tmp_path / "m", f"1={digest}", tmp=tmp_path, stubs=stubs)
    assert result.returncode == 1
    assert f"version 1: cannot hash s3://{bucket}/serving/iris/1/{CHECKSUMS_FILE}: " in result.stderr
    assert reason in result.stderr
    assert "has digest" not in result.stderr, "no digest may be built from a failed hash"
    assert not (tmp_path / "m" / "1").exists()
