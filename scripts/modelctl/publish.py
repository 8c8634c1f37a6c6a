"""Publishing a SavedModel as an immutable version: claim, parallel upload, checksum list, commit marker.

Protocol, per version prefix `s3://<bucket>/<prefix>/<path>/<version>/`:
1. `_CLAIM` is written with `If-None-Match: *` (S3 conditional writes): one publisher per
   version, ever; a committed version keeps its claim, so it can never be claimed again.
   The claim is then written a second time, again with `If-None-Match: *`: a store that
   honours the header answers 412, one that ignores it (and would let two publishers commit
   one version) accepts it, and the publish stops there.
2. The files go up through boto3's transfer manager (parallel across files), each with S3's
   SHA-256 additional checksum and in one request, so the store keeps each file's SHA-256.
3. The listing is compared with the local files (names and sizes), and, when the stack's
   `objectStore.integrity` is `checksums`, the SHA-256 the store keeps for each file with
   the file's own.
4. `CHECKSUMS.sha256` (the digest is its SHA-256), then `_COMMITTED`, again `If-None-Match: *`.
A failure before 4 removes what this publish wrote, claim included; if even that fails
(the store went away), a later `--takeover` replaces the stale claim (`If-Match` on its ETag).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.platform.object_store import (
    CHECKSUMS_FILE,
    CLAIM_FILE,
    COMMIT_MARKER,
    METADATA_FILES,
    StoreError,
    checksum_list,
    describe,
    digest_of,
    error_code,
    list_version,
    s3_client,
    stored_sha256,
    version_prefix,
)
from infra.spec.manifest import ModelManifest
from infra.spec.settings import Integrity, ObjectStoreSettings
from scripts.modelctl.savedmodel_prep import prepare_savedmodel, read_metrics

# 412 when the object exists; 409 when a concurrent conditional write to the key won
# (S3 API reference, PutObject, If-None-Match).
PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")
TRANSFER_CONCURRENCY = 8
# Every file goes up in one PutObject, up to S3's single-PUT limit of 5 GiB (S3 User Guide,
# "Uploading objects"): then the store keeps the file's own SHA-256 (`ChecksumAlgorithm:
# SHA256`). A multipart upload's SHA-256 is a checksum of its parts' checksums (COMPOSITE;
# S3 User Guide, "Checking object integrity"; S3's FULL_OBJECT type exists only for the CRC
# algorithms), which the plan-time check cannot compare with the checksum list. Larger files
# go up in parts and need `objectStore.integrity: download`.
MULTIPART_THRESHOLD = 5 * 1024**3
CHECKSUM_ALGORITHM = "SHA256"


@dataclass(frozen=True)
class Published:
    version: int
    digest: str
    url: str
    files: int
    bytes: int


def local_files(directory: Path) -> dict[str, Path]:
    """Every regular file under `directory`, by '/'-separated relative path."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise StoreError(f"{path}: symbolic links are not published")
        if path.is_file():
            relative = path.relative_to(directory).as_posix()
            if any(c in relative for c in "\n\r\\"):
                # sha256sum escapes such names with a backslash; the checksum list must stay plain.
                raise StoreError(f"{path}: a newline or backslash in a file name cannot be published")
            if relative in METADATA_FILES:
                raise StoreError(f"{path}: {relative} is a reserved name in the object store")
            files[relative] = path
    if not files:
        raise StoreError(f"{directory}: no files to publish")
    return files


class _Progress:
    """A tqdm bar over all bytes, fed by the transfer manager's callbacks (from its threads)."""

    def __init__(self, total: int, label: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not enabled, file=sys.stderr)

    def __call__(self, bytes_transferred: int) -> None:
        self.bar.update(bytes_transferred)

    def close(self) -> None:
        self.bar.close()


class Publisher:
    """Publishes versions of one model to one stack's object store."""

    def __init__(self, store: ObjectStoreSettings, manifest: ModelManifest, client: Any | None = None):
        self.store = store
        self.manifest = manifest
        self.client = client or s3_client(store)
        self.publisher_id = uuid.uuid4().hex

    def url(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"

    def prefix(self, version: int) -> str:
        return version_prefix(self.store.prefix, self.manifest.artifact.path, version)

    def publish(self, directory: Path, version: int, takeover: bool = False, progress: bool = True) -> Published:
        files = local_files(directory)
        checksums = checksum_list(files)
        prefix = self.prefix(version)
        self._require_bucket()
        if self._exists(prefix + COMMIT_MARKER):
            raise StoreError(f"{self.url(prefix)} is already committed; versions are immutable, publish a new one")
        claim_etag = self._claim(prefix, takeover)
        try:
            self._require_conditional_writes(prefix + CLAIM_FILE)
            total = self._upload(files, prefix, progress)
            self._verify_listing(files, prefix)
            if self.store.integrity is Integrity.checksums:
                self._verify_checksums(files, checksums, prefix)
            self._put(prefix + CHECKSUMS_FILE, checksums, exclusive=True)
            marker = {
                "model": self.manifest.name,
                "version": version,
                "digest": digest_of(checksums),
                "publisher": self.publisher_id,
                "committed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            self._put(prefix + COMMIT_MARKER, json.dumps(marker).encode(), exclusive=True)
        except BaseException as exc:
            cleaned = self._abandon(prefix, claim_etag)
            hint = "" if cleaned else "; once no other publish of it runs, retry with --takeover"
            if isinstance(exc, StoreError):
                raise StoreError(f"{exc}; version {version} was not committed{hint}") from None
            raise
        return Published(version, digest_of(checksums), self.url(prefix), len(files), total)

    # steps -------------------------------------------------------------------------------------

    def _require_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.store.bucket)
        except ClientError as exc:
            raise StoreError(f"s3://{self.store.bucket}: bucket not usable: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"s3://{self.store.bucket}: cannot reach the object store: {describe(exc)}") from None

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.store.bucket, Key=key)
            return True
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreError(f"{self.url(key)}: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.url(key)}: cannot reach the object store: {describe(exc)}") from None

    def _put(self, key: str, body: bytes, exclusive: bool = False, if_match: str | None = None) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        extra: dict[str, str] = {"ChecksumAlgorithm": CHECKSUM_ALGORITHM}
        if exclusive:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        try:
            return self.client.put_object(Bucket=self.store.bucket, Key=key, Body=body, **extra)["ETag"]
        except ClientError as exc:
            if error_code(exc) in PRECONDITION_FAILED:
                raise _ConflictError(key) from None
            raise StoreError(f"{self.url(key)}: cannot write: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.url(key)}: cannot reach the object store: {describe(exc)}") from None

    def _require_conditional_writes(self, claim_key: str) -> None:
        """Write our own claim again with `If-None-Match: *`: it exists, so the store must refuse.

        S3 answers 412 Precondition Failed when an object with the key exists (S3 User Guide,
        "How to prevent object overwrites with conditional writes"). A store, gateway or proxy
        that drops or ignores the header lets the write through; then two concurrent publishes
        of one version would both "win" the claim, so nothing is published. The probe rewrites
        the claim with the same body, so accepting it changes nothing.
        """
        try:
            self._put(claim_key, self._claim_body, exclusive=True)
        except _ConflictError:
            return
        raise StoreError(
            f"{self.url(claim_key)}: the store ignored `If-None-Match: *`: a second conditional write of the "
            "claim succeeded instead of failing with 412 Precondition Failed, so two publishers could commit "
            "the same version; refusing to publish. Use a store (and any proxy in front of it) that supports "
            "S3 conditional writes"
        )

    def _verify_checksums(self, files: dict[str, Path], checksums: bytes, prefix: str) -> None:
        """Each uploaded file's SHA-256, as the store keeps it, against the local file's."""
        from botocore.exceptions import BotoCoreError, ClientError

        lines = checksums.decode().splitlines()
        expected = {path: hexdigest for hexdigest, path in (line.split("  ", 1) for line in lines)}
        for relative in files:
            key = prefix + relative
            try:
                actual = stored_sha256(self.client, self.store.bucket, key)
            except (ClientError, BotoCoreError) as exc:
                raise StoreError(f"{self.url(key)}: cannot read its checksum: {describe(exc)}") from None
            if actual.unverifiable:
                raise StoreError(f"{self.url(key)}: {actual.unverifiable}")
            if actual.hexdigest != expected[relative]:
                raise StoreError(
                    f"{self.url(key)}: the store's SHA-256 is {actual.hexdigest}, the file's {expected[relative]}"
                )

    def _claim(self, prefix: str, takeover: bool) -> str:
        claim = json.dumps(
            {"publisher": self.publisher_id, "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        ).encode()
        self._claim_body = claim
        key = prefix + CLAIM_FILE
        try:
            return self._put(key, claim, exclusive=True)
        except _ConflictError:
            pass
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            holder = self.client.get_object(Bucket=self.store.bucket, Key=key)
            details = holder["Body"].read().decode(errors="replace")
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self.url(key)}: cannot read the claim: {describe(exc)}") from None
        if not takeover:
            raise StoreError(
                f"{self.url(key)}: another publish holds this version ({details}); if it was interrupted "
                "and no other publish of this version runs, retry with --takeover"
            )
        if self._exists(prefix + COMMIT_MARKER):
            raise StoreError(f"{self.url(prefix)} was committed meanwhile; versions are immutable")
        try:
            etag = self._put(key, claim, if_match=holder["ETag"])
        except _ConflictError:
            raise StoreError(f"{self.url(key)}: another publish took this version over first") from None
        self._delete_all(prefix, keep=key)
        return etag

    def _upload(self, files: dict[str, Path], prefix: str, progress: bool) -> int:
        from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
        from botocore.exceptions import BotoCoreError, ClientError

        total = sum(path.stat().st_size for path in files.values())
        config = TransferConfig(
            max_concurrency=TRANSFER_CONCURRENCY, multipart_threshold=MULTIPART_THRESHOLD, use_threads=True
        )
        bar = _Progress(total, f"{self.manifest.name} -> {self.url(prefix)}", progress)
        subscriber = ProgressCallbackInvoker(bar)
        try:
            with create_transfer_manager(self.client, config) as manager:
                futures = {
                    relative: manager.upload(
                        str(path),
                        self.store.bucket,
                        prefix + relative,
                        extra_args={"ChecksumAlgorithm": CHECKSUM_ALGORITHM},
                        subscribers=[subscriber],
                    )
                    for relative, path in files.items()
                }
                for relative, future in futures.items():
                    try:
                        future.result()
                    except (ClientError, BotoCoreError, OSError) as exc:
                        for other in futures.values():
                            other.cancel()
                        raise StoreError(f"{self.url(prefix + relative)}: upload failed: {describe(exc)}") from None
        finally:
            bar.close()
        return total

    def _listing(self, prefix: str) -> dict[str, int]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return list_version(self.client, self.store.bucket, prefix)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self.url(prefix)}: cannot list: {describe(exc)}") from None

    def _verify_listing(self, files: dict[str, Path], prefix: str) -> None:
        listed = self._listing(prefix)
        listed.pop(CLAIM_FILE, None)
        expected = {relative: path.stat().st_size for relative, path in files.items()}
        if listed != expected:
            unexpected = sorted(set(listed) - set(expected))
            missing = sorted(set(expected) - set(listed))
            raise StoreError(
                f"{self.url(prefix)}: the store does not hold what was uploaded "
                f"(missing {missing or 'none'}, unexpected {unexpected or 'none'})"
            )

    def _delete_all(self, prefix: str, keep: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for relative in self._listing(prefix):
            key = prefix + relative
            if key == keep:
                continue
            try:
                self.client.delete_object(Bucket=self.store.bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                raise StoreError(f"{self.url(key)}: cannot delete: {describe(exc)}") from None

    def _abandon(self, prefix: str, claim_etag: str) -> bool:
        """Remove what this publish wrote, then its claim (only if still ours). False if it could not."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if self._exists(prefix + COMMIT_MARKER):
                return True  # committed after all (a lost response); nothing to undo
            self._delete_all(prefix, keep=prefix + CLAIM_FILE)
            self.client.delete_object(Bucket=self.store.bucket, Key=prefix + CLAIM_FILE, IfMatch=claim_etag)
            return True
        except (StoreError, ClientError, BotoCoreError):
            return False


class _ConflictError(Exception):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def publish_model(
    root: Path,
    model: str,
    directory: Path,
    stack: str,
    version: int | None = None,
    takeover: bool = False,
    progress: bool = True,
    client: Any | None = None,
) -> Published:
    """Check the SavedModel, record its contract, write its warmup requests, publish it to the
    stack's store, then record it (digest, metrics, contract) in the manifest."""
    from infra.spec.settings import load_stack_settings
    from scripts.modelctl import manifest_edit

    manifest = manifest_edit.load(root, model)
    settings = load_stack_settings(root, stack)
    if not directory.is_dir():
        raise StoreError(f"{directory}: no such directory")
    number = version if version is not None else max(manifest.versions, default=0) + 1
    if number < 1:
        raise StoreError(f"--version {number}: versions are positive integers")
    if number in manifest.versions:
        raise StoreError(
            f"models/{model}.yaml: version {number} is already published; versions are immutable, "
            f"the next is {max(manifest.versions, default=0) + 1}"
        )
    metrics = read_metrics(directory)
    contract = prepare_savedmodel(manifest, directory)
    published = Publisher(settings.object_store, manifest, client).publish(directory, number, takeover, progress)
    manifest_edit.edit(
        root,
        model,
        lambda document: manifest_edit.add_version(
            document, number, published.digest, metrics, contract.model_dump(mode="json", exclude_none=True)
        ),
    )
    return published
