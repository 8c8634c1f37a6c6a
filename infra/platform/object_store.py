"""Layout of model versions in the object store, shared by the publisher, the fetcher and the checks."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.spec.settings import ObjectStoreSettings

# s3://<bucket>/<prefix>/<artifact.path>/<version>/ holds the SavedModel files plus:
CHECKSUMS_FILE = "CHECKSUMS.sha256"  # `sha256sum` lines of every published file; its sha256 is the digest
COMMIT_MARKER = "_COMMITTED"  # written last; a version without it does not exist
CLAIM_FILE = "_CLAIM"  # written first, conditionally: one publisher per version, kept forever
METADATA_FILES = (CHECKSUMS_FILE, COMMIT_MARKER, CLAIM_FILE)


class StoreError(Exception):
    """An object-store operation failed; the message names the object."""


def version_prefix(prefix: str, artifact_path: str, version: int) -> str:
    """Key prefix of one version, with a trailing slash; never outside `prefix`."""
    from infra.spec.manifest import key_path_problem

    # The settings and the manifest refuse these already; a key is built here, so check here.
    for part in (prefix.strip("/"), artifact_path):
        problem = key_path_problem(part)
        if problem is not None:
            raise StoreError(f"key prefix {part!r} {problem}; refusing to build a key from it")
    return f"{prefix.strip('/')}/{artifact_path}/{int(version)}/"


def digest_of(checksums: bytes) -> str:
    return "sha256:" + hashlib.sha256(checksums).hexdigest()


def checksum_list(files: dict[str, Path]) -> bytes:
    """`sha256sum` format, '<hex>  <relative path>' per file, sorted: `sha256sum -c` verifies it."""
    lines = []
    for relative in sorted(files):
        digest = hashlib.sha256()
        with files[relative].open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {relative}\n")
    return "".join(lines).encode()


def s3_client(store: ObjectStoreSettings) -> Any:
    """A boto3 S3 client for the stack's store: its region, the standard credential chain, and the
    endpoint reachable from outside the cluster (`externalEndpoint`, else `endpoint`).

    Every boto3 client of the store runs outside the cluster: the program's artifact check on
    the machine running `pulumi preview`/`up` (a CI runner), `modelctl plan --check-artifacts`,
    publish and promote. Only the fetcher, in the pod, uses `endpoint`. A private CA for the
    external endpoint is trusted through AWS_CA_BUNDLE, which boto3 reads itself
    (botocore/configprovider.py, `ca_bundle`).
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=store.outside_endpoint,
        region_name=store.region,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def describe(exc: Exception) -> str:
    """A one-line cause of a botocore/boto3 failure."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return " ".join(str(exc).split()) or type(exc).__name__


def error_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code")) or None
    return None


@dataclass(frozen=True)
class VersionProblem:
    """Why a served version cannot be trusted: names the object key."""

    key: str
    message: str


# A checksum list is one line per file of a SavedModel: a few KiB. Read no more than this.
MAX_CHECKSUM_LIST_BYTES = 1024 * 1024
# Problems reported per version before the rest are summarised (a wholesale replacement of a
# version would otherwise print a line per object).
MAX_PROBLEMS_PER_VERSION = 10
# `sha256sum` output: 64 hex digits, a space, ' ' (text) or '*' (binary mode), the name.
# GNU sha256sum starts a line with a backslash when it escapes the name; we never write those.
CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
NOT_FOUND = ("404", "NoSuchKey", "NotFound")
MULTIPART_ETAG = re.compile(r'-[0-9]+"?$')


def parse_checksum_list(checksums: bytes) -> tuple[dict[str, str], list[str]]:
    """`{relative path: hex sha256}` of a checksum list, and what is wrong with it.

    A path names a key under the version's prefix, so it must stay there (no absolute path,
    no `.`/`..`/empty segment): the checks HEAD it, and the fetcher writes it to disk.
    """
    from infra.spec.manifest import key_path_problem

    entries: dict[str, str] = {}
    problems = []
    try:
        text = checksums.decode("utf-8")
    except UnicodeDecodeError:
        return {}, ["is not UTF-8 text"]
    for number, line in enumerate(text.splitlines(), start=1):
        match = CHECKSUM_LINE.match(line)
        if match is None:
            problems.append(f"line {number} is not `<sha256 hex>  <path>`")
            continue
        hexdigest, path = match.groups()
        problem = key_path_problem(path)
        if problem is not None or path in METADATA_FILES:
            problems.append(f"line {number}: path {path!r} {problem or 'is a reserved name'}")
        elif path in entries:
            problems.append(f"line {number}: {path!r} is listed twice")
        else:
            entries[path] = hexdigest
    if not entries and not problems:
        problems.append("lists no files")
    return entries, problems


def check_version(
    client: Any, bucket: str, prefix: str, expected_digest: str, integrity: str = "checksums"
) -> VersionProblem | None:
    """The first reason the version under `prefix` cannot be trusted, or None (see verify_version)."""
    problems = verify_version(client, bucket, prefix, expected_digest, integrity)
    return problems[0] if problems else None


def verify_version(
    client: Any, bucket: str, prefix: str, expected_digest: str, integrity: str = "checksums"
) -> list[VersionProblem]:
    """Is the version under `prefix` committed, does its checksum list hash to `expected_digest`,
    and does the store hold exactly the objects the list names, each with the listed SHA-256?

    `integrity` (the stack's objectStore.integrity) says how an object's content is checked:
    `checksums` compares the SHA-256 the store keeps for it (HEAD with checksum mode, no
    download), `download` hashes its bytes, `listing` only requires it to exist.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    url = f"s3://{bucket}/{prefix}"
    try:
        client.head_object(Bucket=bucket, Key=prefix + COMMIT_MARKER)
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            return [VersionProblem(url + COMMIT_MARKER, "not committed: the commit marker is missing")]
        return [VersionProblem(url + COMMIT_MARKER, f"cannot read: {describe(exc)}")]
    except BotoCoreError as exc:
        return [VersionProblem(url + COMMIT_MARKER, f"cannot reach the object store: {describe(exc)}")]
    try:
        body = client.get_object(Bucket=bucket, Key=prefix + CHECKSUMS_FILE)["Body"]
        checksums = body.read(MAX_CHECKSUM_LIST_BYTES + 1)
        body.close()
    except (ClientError, BotoCoreError) as exc:
        return [VersionProblem(url + CHECKSUMS_FILE, f"cannot read the checksum list: {describe(exc)}")]
    if len(checksums) > MAX_CHECKSUM_LIST_BYTES:
        return [VersionProblem(url + CHECKSUMS_FILE, f"the checksum list is over {MAX_CHECKSUM_LIST_BYTES} bytes")]
    actual = digest_of(checksums)
    if actual != expected_digest:
        return [VersionProblem(url + CHECKSUMS_FILE, f"digest is {actual}, the manifest says {expected_digest}")]
    entries, list_problems = parse_checksum_list(checksums)
    if list_problems:
        return [VersionProblem(url + CHECKSUMS_FILE, f"the checksum list {p}") for p in list_problems]
    try:
        stored = list_version(client, bucket, prefix)
    except (ClientError, BotoCoreError) as exc:
        return [VersionProblem(url, f"cannot list the version's objects: {describe(exc)}")]
    problems = [
        VersionProblem(url + path, "extra object: the checksum list does not name it (not published with this version)")
        for path in sorted(set(stored) - set(entries) - set(METADATA_FILES))
    ]
    problems += [
        VersionProblem(url + path, "missing: the checksum list names it, the store does not hold it")
        for path in sorted(set(entries) - set(stored))
    ]
    for path in sorted(set(entries) & set(stored)):
        if len(problems) > MAX_PROBLEMS_PER_VERSION:
            break
        message = _content_problem(client, bucket, prefix + path, entries[path], integrity)
        if message is not None:
            problems.append(VersionProblem(url + path, message))
    if len(problems) > MAX_PROBLEMS_PER_VERSION:
        more = len(problems) - MAX_PROBLEMS_PER_VERSION
        problems = [*problems[:MAX_PROBLEMS_PER_VERSION], VersionProblem(url, f"and {more} more problem(s)")]
    return problems


def list_version(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """`{key relative to prefix: size}` of every object under `prefix`."""
    sizes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            sizes[item["Key"][len(prefix) :]] = item["Size"]
    return sizes


def sha256_of_checksum(value: str) -> str | None:
    """Hex SHA-256 of an S3 `ChecksumSHA256` value (base64 of the raw 32-byte digest), or None
    when it is not a whole-object digest (a multipart upload's checksum of checksums, `<b64>-<N>`)."""
    if "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _content_problem(client: Any, bucket: str, key: str, expected_hex: str, integrity: str) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError

    if integrity == "listing":
        return None
    try:
        if integrity == "download":
            actual = _download_sha256(client, bucket, key)
        else:
            stored = stored_sha256(client, bucket, key)
            if stored.unverifiable is not None:
                return stored.unverifiable
            actual = stored.hexdigest
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND:
            return "missing: the checksum list names it, the store does not hold it"
        return f"cannot read: {describe(exc)}"
    except BotoCoreError as exc:
        return f"cannot reach the object store: {describe(exc)}"
    if actual != expected_hex:
        return (
            f"SHA-256 is {actual}, the checksum list says {expected_hex}: the object changed after it was "
            "published (or was replaced)"
        )
    return None


@dataclass(frozen=True)
class StoredChecksum:
    """The SHA-256 a store keeps for an object (hex), or why it has none to compare."""

    hexdigest: str | None = None
    unverifiable: str | None = None


def stored_sha256(client: Any, bucket: str, key: str) -> StoredChecksum:
    """The object's SHA-256 as the store keeps it, from a HEAD request (no download)."""
    # HeadObject returns the additional checksums only when asked (`ChecksumMode: ENABLED`), as
    # `x-amz-checksum-sha256`: base64 of the raw digest (S3 API reference, HeadObject,
    # ChecksumMode and ChecksumSHA256). For an object uploaded in parts the value is a checksum
    # of the parts' checksums with a `-<parts>` suffix, and `ChecksumType` is COMPOSITE (S3 User
    # Guide, "Checking object integrity", multipart uploads): not the file's SHA-256. Publish
    # uploads every file up to S3's 5 GiB single-PUT limit in one request so it has a whole-
    # object SHA-256. moto reports a multipart upload's composite value without the suffix and
    # without ChecksumType, so the ETag is consulted too: a multipart object's ETag is not an
    # MD5 of its bytes and ends in `-<parts>` (S3 API reference, Object: ETag; moto does the
    # same). With SSE-KMS, checksum mode also needs kms:Decrypt (S3 API reference, HeadObject).
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    value = head.get("ChecksumSHA256")
    if not value:
        found = sorted(k.removeprefix("Checksum") for k in head if k.startswith("Checksum") and k != "ChecksumType")
        return StoredChecksum(
            unverifiable="the store returned no SHA-256 checksum for it"
            + (f" (only {', '.join(found)})" if found else "")
            + ": it was not stored by `modelctl publish` with its checksum (replaced?), or the store keeps no "
            "S3 additional checksums; for such a store set the stack's objectStore.integrity to `download`"
        )
    multipart = head.get("ChecksumType") == "COMPOSITE" or (
        head.get("ChecksumType") != "FULL_OBJECT" and MULTIPART_ETAG.search(head.get("ETag", ""))
    )
    actual = None if multipart else sha256_of_checksum(value)
    if actual is None:
        return StoredChecksum(
            unverifiable=f"the store's SHA-256 {value!r} is a multipart upload's checksum of its parts, not the "
            "file's: republish it (publish uploads files up to 5 GiB in one request) or set "
            "objectStore.integrity: download"
        )
    return StoredChecksum(hexdigest=actual)


def _download_sha256(client: Any, bucket: str, key: str) -> str:
    """Hex SHA-256 of an object's bytes, streamed in 1 MiB blocks (memory stays bounded)."""
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        for block in iter(lambda: body.read(1 << 20), b""):
            digest.update(block)
    finally:
        body.close()
    return digest.hexdigest()
