"""Layout of model versions in the object store, shared by the publisher, the fetcher and the checks."""

from __future__ import annotations

import hashlib
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
    """Key prefix of one version, with a trailing slash."""
    return f"{prefix.strip('/')}/{artifact_path}/{version}/"


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


def check_version(client: Any, bucket: str, prefix: str, expected_digest: str) -> VersionProblem | None:
    """Is the version under `prefix` committed and does its checksum list hash to `expected_digest`?"""
    from botocore.exceptions import BotoCoreError, ClientError

    url = f"s3://{bucket}/{prefix}"
    try:
        client.head_object(Bucket=bucket, Key=prefix + COMMIT_MARKER)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return VersionProblem(url + COMMIT_MARKER, "not committed: the commit marker is missing")
        return VersionProblem(url + COMMIT_MARKER, f"cannot read: {describe(exc)}")
    except BotoCoreError as exc:
        return VersionProblem(url + COMMIT_MARKER, f"cannot reach the object store: {describe(exc)}")
    try:
        checksums = client.get_object(Bucket=bucket, Key=prefix + CHECKSUMS_FILE)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        return VersionProblem(url + CHECKSUMS_FILE, f"cannot read the checksum list: {describe(exc)}")
    actual = digest_of(checksums)
    if actual != expected_digest:
        return VersionProblem(url + CHECKSUMS_FILE, f"digest is {actual}, the manifest says {expected_digest}")
    return None
