"""Integrity before rollout, against a real S3 server (moto) on loopback: publish stores each
object's SHA-256, the plan's artifact check verifies every object of a served version against
its checksum list, and a store that ignores conditional writes is refused."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pulumi
import pytest

from infra import program
from infra.offline import OfflineRun, run_stack
from infra.platform.object_store import CLAIM_FILE, COMMIT_MARKER, StoreError, version_prefix
from infra.spec.settings import load_stack_settings
from scripts.modelctl import manifest_edit, publish
from scripts.modelctl.cli import main
from scripts.modelctl.localstore import TEST_CREDENTIALS
from tests.conftest import copy_project, edit_yaml
from tests.faultproxy import FaultProxy

BUCKET = "models-integrity"
PREFIX = "serving"
VERSION = 4
FILES = {
    "saved_model.pb": b"\x08\x01" * 500,
    "variables/variables.index": b"index" * 20,
    "variables/variables.data-00000-of-00001": bytes(range(256)) * 40,
    "fingerprint.pb": b"fp",
}
VERSION_URL = f"s3://{BUCKET}/{PREFIX}/iris/{VERSION}/"


@pytest.fixture
def credentials(monkeypatch):
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def store(s3_server, credentials):
    client = s3_server.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


def set_store(root: Path, **fields) -> None:
    """The prod stack's object store: the test server (or a proxy in front of it) and `fields`."""

    def change(document):
        store = document["config"]["model-serving:objectStore"]
        store.update({"bucket": BUCKET, "prefix": PREFIX, "region": "us-east-1"} | fields)

    edit_yaml(root / "stacks" / "Pulumi.prod.yaml", change)


@pytest.fixture
def project(tmp_path, s3_server, store) -> Path:
    root = copy_project(tmp_path / "project")
    set_store(root, endpoint=s3_server.endpoint)
    # Only iris is served in prod here, so every check result is about the version published below.
    edit_yaml(root / "models" / "taxi-fare.yaml", lambda d: d["environments"].pop("prod"))
    return root


@pytest.fixture
def savedmodel(tmp_path) -> Path:
    """A directory shaped like a SavedModel (the checks never look inside the files)."""
    directory = tmp_path / "savedmodel"
    for relative, body in FILES.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(body)
    return directory


def publish_version(root: Path, directory: Path) -> str:
    """Publish `directory` as iris version 4 to prod's store, record it, serve it in prod; the digest."""
    settings = load_stack_settings(root, "prod")
    manifest = manifest_edit.load(root, "iris")
    published = publish.Publisher(settings.object_store, manifest).publish(directory, VERSION, progress=False)

    def record(document):
        manifest_edit.add_version(document, VERSION, published.digest, {"accuracy": 0.99})
        manifest_edit.set_label(document, "prod", "stable", VERSION)

    manifest_edit.edit(root, "iris", record)
    return published.digest


def check_artifacts(root: Path, capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(["--root", str(root), "plan", "--stack", "prod", "--check-artifacts"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("models/")], err


def key(relative: str) -> str:
    return version_prefix(PREFIX, "iris", VERSION) + relative


def test_publish_stores_each_object_with_its_sha256(project, savedmodel, store):
    publish_version(project, savedmodel)
    for relative, body in FILES.items():
        head = store.head_object(Bucket=BUCKET, Key=key(relative), ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()


def test_a_published_version_passes_the_check(project, savedmodel, capsys):
    publish_version(project, savedmodel)
    code, lines, err = check_artifacts(project, capsys)
    assert code == 0 and lines == [], err


def test_an_object_overwritten_after_publishing_is_refused_naming_model_version_and_key(
    project, savedmodel, store, capsys
):
    publish_version(project, savedmodel)
    tampered = b"\x08\x02" * 500
    store.put_object(Bucket=BUCKET, Key=key("saved_model.pb"), Body=tampered, ChecksumAlgorithm="SHA256")
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1
    assert lines == [
        f"models/iris.yaml: environments.prod.stable: model iris version {VERSION}: {VERSION_URL}saved_model.pb: "
        f"SHA-256 is {hashlib.sha256(tampered).hexdigest()}, the checksum list says "
        f"{hashlib.sha256(FILES['saved_model.pb']).hexdigest()}: the object changed after it was published "
        "(or was replaced)"
    ]


def test_an_object_overwritten_without_a_checksum_is_refused(project, savedmodel, store, capsys):
    publish_version(project, savedmodel)
    # botocore adds a CRC32 of its own by default (request_checksum_calculation=when_supported); no SHA-256.
    store.put_object(Bucket=BUCKET, Key=key("fingerprint.pb"), Body=b"fp")
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1 and len(lines) == 1
    assert f"model iris version {VERSION}: {VERSION_URL}fingerprint.pb: the store returned no SHA-256" in lines[0]
    assert "objectStore.integrity to `download`" in lines[0]


def test_a_missing_object_is_refused(project, savedmodel, store, capsys):
    publish_version(project, savedmodel)
    store.delete_object(Bucket=BUCKET, Key=key("variables/variables.index"))
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1
    assert lines == [
        f"models/iris.yaml: environments.prod.stable: model iris version {VERSION}: "
        f"{VERSION_URL}variables/variables.index: missing: the checksum list names it, the store does not hold it"
    ]


def test_an_extra_object_is_refused(project, savedmodel, store, capsys):
    publish_version(project, savedmodel)
    store.put_object(Bucket=BUCKET, Key=key("assets/extra.txt"), Body=b"x", ChecksumAlgorithm="SHA256")
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1
    assert lines == [
        f"models/iris.yaml: environments.prod.stable: model iris version {VERSION}: {VERSION_URL}assets/extra.txt: "
        "extra object: the checksum list does not name it (not published with this version)"
    ]


@pytest.fixture
def proxy(s3_server):
    proxy = FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_a_store_without_checksums_is_a_clear_error_and_download_mode_verifies(
    project, savedmodel, store, proxy, capsys
):
    publish_version(project, savedmodel)
    # As a store that keeps no additional checksums: they never reach the client.
    proxy.strip_response_headers = re.compile(r"^x-amz-checksum-")
    set_store(project, endpoint=proxy.endpoint)
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1 and len(lines) == len(FILES)
    assert all("the store returned no SHA-256 checksum for it" in line for line in lines)
    assert all("set the stack's objectStore.integrity to `download`" in line for line in lines)
    assert proxy.stripped, "the proxy did strip the checksum headers"
    # `download`: each object is hashed, so the same store passes...
    set_store(project, endpoint=proxy.endpoint, integrity="download")
    code, lines, err = check_artifacts(project, capsys)
    assert code == 0 and lines == [], err
    # ...and a replaced object is still caught.
    store.put_object(Bucket=BUCKET, Key=key("saved_model.pb"), Body=b"replaced")
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1 and len(lines) == 1
    assert f"{VERSION_URL}saved_model.pb: SHA-256 is {hashlib.sha256(b'replaced').hexdigest()}" in lines[0]


def test_listing_mode_warns_that_contents_are_unverified_but_still_refuses_missing_objects(
    project, savedmodel, store, capsys
):
    publish_version(project, savedmodel)
    set_store(project, endpoint=store.meta.endpoint_url, integrity="listing")
    store.put_object(Bucket=BUCKET, Key=key("saved_model.pb"), Body=b"replaced")
    code, lines, err = check_artifacts(project, capsys)
    assert code == 0 and lines == []
    assert "warning: stack prod: objectStore.integrity is `listing`" in err and "contents" in err
    store.delete_object(Bucket=BUCKET, Key=key("fingerprint.pb"))
    code, lines, _ = check_artifacts(project, capsys)
    assert code == 1 and "fingerprint.pb: missing" in lines[0]


def test_a_bad_integrity_setting_names_the_field(project, capsys):
    set_store(project, endpoint="http://127.0.0.1:9", integrity="sometimes")
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    assert "stacks/Pulumi.prod.yaml: config.model-serving:objectStore.integrity: " in err
    assert "'checksums', 'download' or 'listing'" in err


def test_the_program_in_a_real_preview_refuses_a_tampered_object(project, savedmodel, store):
    publish_version(project, savedmodel)
    declared = OfflineRun(stack="prod")
    run_stack(project, "prod", entry=program.main, into=declared)
    assert any(r.name == "iris-deployment" for r in declared.resources)
    store.put_object(Bucket=BUCKET, Key=key("saved_model.pb"), Body=b"replaced", ChecksumAlgorithm="SHA256")
    declared = OfflineRun(stack="prod")
    with pytest.raises(pulumi.RunError):
        run_stack(project, "prod", entry=program.main, into=declared)
    assert declared.resources == [], "nothing declared"


def test_a_multipart_objects_composite_checksum_is_not_taken_for_the_files(
    project, savedmodel, store, monkeypatch, capsys
):
    # Publish sends files up to 5 GiB in one PUT; a smaller threshold stands for a larger file.
    # Parts are at least 5 MiB (S3's minimum part size, which moto enforces too).
    monkeypatch.setattr(publish, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    (savedmodel / "variables" / "variables.data-00000-of-00001").write_bytes(b"v" * (6 * 1024 * 1024))
    with pytest.raises(StoreError, match="is a multipart upload's checksum of its parts, not the file's"):
        publish_version(project, savedmodel)
    assert COMMIT_MARKER not in {o["Key"].rsplit("/", 1)[-1] for o in _listing(store)}
    # With `download`, the same upload publishes and verifies.
    set_store(project, endpoint=store.meta.endpoint_url, integrity="download")
    publish_version(project, savedmodel)
    code, lines, err = check_artifacts(project, capsys)
    assert code == 0 and lines == [], err


def _listing(store) -> list[dict]:
    return store.list_objects_v2(Bucket=BUCKET, Prefix=version_prefix(PREFIX, "iris", VERSION)).get("Contents", [])


# Conditional writes ------------------------------------------------------------------------------


def test_moto_honours_if_none_match(store):
    # What the publish probe relies on, checked on the server the tests use.
    store.put_object(Bucket=BUCKET, Key="probe", Body=b"1")
    with pytest.raises(store.exceptions.ClientError) as caught:
        store.put_object(Bucket=BUCKET, Key="probe", Body=b"2", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_a_store_that_ignores_conditional_writes_is_refused_before_publishing(
    project, savedmodel, store, proxy, capsys
):
    proxy.strip_request_headers = {"if-none-match"}
    set_store(project, endpoint=proxy.endpoint)
    with pytest.raises(StoreError) as caught:
        publish_version(project, savedmodel)
    message = str(caught.value)
    assert message.startswith(f"{VERSION_URL}{CLAIM_FILE}: the store ignored `If-None-Match: *`")
    assert "two publishers could commit the same version; refusing to publish" in message
    assert any(line.lower().startswith("if-none-match") for line in proxy.stripped)
    assert _listing(store) == [], "nothing uploaded, the claim removed"
    assert VERSION not in manifest_edit.load(project, "iris").versions
    # The same store without the proxy publishes.
    proxy.strip_request_headers = set()
    publish_version(project, savedmodel)
    assert COMMIT_MARKER in {o["Key"].rsplit("/", 1)[-1] for o in _listing(store)}


def test_publish_from_the_command_line_refuses_it_with_one_line(project, savedmodel, store, proxy, monkeypatch, capsys):
    # The command reads the SavedModel's contract and writes its warmup with TensorFlow first;
    # not the point here: the fake SavedModel stands for version 3's export.
    contract = manifest_edit.load(project, "iris").versions[3].contract
    monkeypatch.setattr("scripts.modelctl.publish.prepare_savedmodel", lambda *_args: contract)
    proxy.strip_request_headers = {"if-none-match"}
    set_store(project, endpoint=proxy.endpoint)
    code = main(["--root", str(project), "publish", "iris", str(savedmodel), "--stack", "prod", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("modelctl: s3://") and "the store ignored `If-None-Match: *`" in err
    assert "Traceback" not in err
