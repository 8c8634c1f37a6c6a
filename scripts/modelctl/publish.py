"""Publishing a SavedModel as an immutable version: claim, parallel upload, checksum list, commit marker.

Protocol, per version prefix `s3://<bucket>/<prefix>/<path>/<version>/`; every object is written
through conditional_write.ConditionalWriter: `If-None-Match: *`, the publisher's id and the
object's SHA-256 in its metadata, S3's SHA-256 additional checksum; a write refused because the
object exists is a success when the object is this publisher's (a retry after a lost reply):
1. `_CLAIM` (one publisher per version, ever; a committed version keeps its claim). The claim
   is then written a second time, again with `If-None-Match: *`: a store that honours the
   header answers 412, one that ignores it (and would let two publishers commit one version)
   accepts it, and the publish stops there.
2. The files, 8 at a time, each in one request up to S3's 5 GiB single-PUT limit.
3. The listing is compared with the local files (names and sizes), and, when the stack's
   `objectStore.integrity` is `checksums`, the SHA-256 the store keeps for each file with
   the file's own.
4. `CHECKSUMS.sha256` (the digest is its SHA-256), then `_COMMITTED`.
A version is committed when `_COMMITTED` exists, and then holds exactly what its checksum list
names: no object of it can be overwritten (If-None-Match), and a late write of a publisher that
lost the version finds the winner's object in place. A failure before 4 removes this
publisher's own objects (each by a conditional delete on the ETag it read), claim included; if
even that fails, a later `--takeover` replaces the stale claim (`If-Match` on its ETag).
A re-run over a version already committed with the same digest (the first run lost the reply to
its `_COMMITTED` and gave up) verifies it and records it instead of refusing it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
    list_version,
    parse_checksum_list,
    s3_client,
    stored_sha256,
    verify_version,
    version_prefix,
)
from infra.spec.manifest import ModelManifest
from infra.spec.settings import Integrity, ObjectStoreSettings
from infra.spec.validators import version_problem
from scripts.modelctl.conditional_write import ConditionalWriter, ObjectTakenError
from scripts.modelctl.savedmodel_prep import prepare_savedmodel, read_metrics

TRANSFER_CONCURRENCY = 8
# Every file goes up in one PutObject, up to S3's single-PUT limit of 5 GiB (S3 User Guide,
# "Uploading objects"): then the store keeps the file's own SHA-256 (`ChecksumSHA256`). A
# multipart upload's SHA-256 is a checksum of its parts' checksums (COMPOSITE; S3 User Guide,
# "Checking object integrity"; S3's FULL_OBJECT type exists only for the CRC algorithms), which
# the plan-time check cannot compare with the checksum list. Larger files go up in parts (with
# `If-None-Match` on CompleteMultipartUpload) and need `objectStore.integrity: download`.
MULTIPART_THRESHOLD = 5 * 1024**3
# Attempts at writing one object whose key holds a stray of the publisher this one took over
# from (its upload was still in flight when the claim changed hands): delete it, write again.
STRAY_ATTEMPTS = 3


@dataclass(frozen=True)
class Published:
    version: int
    digest: str
    url: str
    files: int
    bytes: int
    # True when an earlier run had committed this very content (its reply to `_COMMITTED` was
    # lost): nothing was written now, the version was verified and is recorded.
    already_committed: bool = False


class VersionLostError(StoreError):
    """Another publisher holds or committed the version this publish was writing."""


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
    """A tqdm bar over all bytes, advanced as each file is stored (from the upload threads)."""

    def __init__(self, total: int, label: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not enabled, file=sys.stderr)

    def __call__(self, bytes_transferred: int) -> None:
        self.bar.update(bytes_transferred)

    def close(self) -> None:
        self.bar.close()


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Publisher:
    """Publishes versions of one model to one stack's object store."""

    def __init__(self, store: ObjectStoreSettings, manifest: ModelManifest, client: Any | None = None):
        self.store = store
        self.manifest = manifest
        self.client = client or s3_client(store)
        self.publisher_id = uuid.uuid4().hex
        self.writer = ConditionalWriter(self.client, store.bucket, self.publisher_id)

    def url(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"

    def prefix(self, version: int) -> str:
        return version_prefix(self.store.prefix, self.manifest.artifact.path, version)

    def publish(self, directory: Path, version: int, takeover: bool = False, progress: bool = True) -> Published:
        files = local_files(directory)
        checksums = checksum_list(files)
        digest = digest_of(checksums)
        expected, _ = parse_checksum_list(checksums)
        prefix = self.prefix(version)
        total = sum(path.stat().st_size for path in files.values())
        self._require_bucket()
        if self.writer.head(prefix + COMMIT_MARKER) is not None:
            self._require_same_commit(prefix, digest)
            return Published(version, digest, self.url(prefix), len(files), total, already_committed=True)
        self._claim(prefix, version, takeover)
        try:
            self._require_conditional_writes(prefix + CLAIM_FILE)
            self._upload(files, expected, prefix, progress, total)
            self._verify_listing(files, prefix)
            if self.store.integrity is Integrity.checksums:
                self._verify_checksums(files, expected, prefix)
            self._write(prefix, CHECKSUMS_FILE, checksums)
            marker = {
                "model": self.manifest.name,
                "version": version,
                "digest": digest,
                "publisher": self.publisher_id,
                "committed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            commit_body = json.dumps(marker).encode()
            self._write(prefix, COMMIT_MARKER, commit_body)
        except BaseException as exc:
            if self._committed_by_me(prefix):
                # The marker is in place, ours (its reply, and the retries' replies, were lost).
                return Published(version, digest, self.url(prefix), len(files), total)
            lost = self._lost_to(prefix, version) if isinstance(exc, StoreError) else None
            cleaned = self._abandon(prefix)
            if lost is not None:
                raise lost from None
            hint = "" if cleaned else "; once no other publish of it runs, retry with --takeover"
            if isinstance(exc, StoreError):
                raise StoreError(f"{exc}; version {version} was not committed{hint}") from None
            raise
        return Published(version, digest, self.url(prefix), len(files), total)

    # steps -------------------------------------------------------------------------------------

    def _require_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.store.bucket)
        except ClientError as exc:
            raise StoreError(f"s3://{self.store.bucket}: bucket not usable: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"s3://{self.store.bucket}: cannot reach the object store: {describe(exc)}") from None

    def _require_same_commit(self, prefix: str, digest: str) -> None:
        """A committed version is accepted again only with the same content, verified in the store."""
        marker = self._read_json(prefix + COMMIT_MARKER)
        committed = marker.get("digest")
        if committed != digest:
            raise StoreError(
                f"{self.url(prefix)} is already committed; versions are immutable, publish a new one "
                f"(it holds {committed or 'an unreadable digest'}, this SavedModel is {digest})"
            )
        problems = verify_version(self.client, self.store.bucket, prefix, digest, self.store.integrity.value)
        if problems:
            raise StoreError(
                f"{self.url(prefix)} is committed with this SavedModel's digest but does not verify "
                f"({problems[0].key}: {problems[0].message}); publish a new version"
            )

    def _read_json(self, key: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.store.bucket, Key=key)["Body"].read(1 << 16)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self.url(key)}: cannot read: {describe(exc)}") from None
        try:
            document = json.loads(body)
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def _claim(self, prefix: str, version: int, takeover: bool) -> str:
        claim = json.dumps(
            {"publisher": self.publisher_id, "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        ).encode()
        self._claim_body = claim
        key = prefix + CLAIM_FILE
        try:
            return self.writer.create(key, claim, _sha256(claim))
        except ObjectTakenError as taken:
            holder_etag = taken.etag
        details = json.dumps(self._read_json(key)) if holder_etag else "gone meanwhile"
        if not takeover:
            raise StoreError(
                f"{self.url(key)}: another publish holds this version ({details}); if it was interrupted "
                "and no other publish of this version runs, retry with --takeover"
            )
        if self.writer.head(prefix + COMMIT_MARKER) is not None:
            raise StoreError(f"{self.url(prefix)} was committed meanwhile; versions are immutable")
        try:
            etag = self.writer.create(key, claim, _sha256(claim), if_match=holder_etag)
        except ObjectTakenError as taken:
            raise VersionLostError(
                f"model {self.manifest.name} version {version}: another publish "
                f"({taken.holder or 'unknown publisher'}) took this version over first; this one wrote nothing"
            ) from None
        # The claim is ours: the stale publisher's objects go, never a commit marker written meanwhile.
        if self.writer.head(prefix + COMMIT_MARKER) is not None:
            raise VersionLostError(
                f"model {self.manifest.name} version {version}: it was committed while being taken over; "
                "versions are immutable, publish a new one"
            )
        self._delete_all(prefix, keep=(key, prefix + COMMIT_MARKER))
        return etag

    def _require_conditional_writes(self, claim_key: str) -> None:
        """Write our own claim again with `If-None-Match: *`: it exists, so the store must refuse.

        S3 answers 412 Precondition Failed when an object with the key exists (S3 User Guide,
        "How to prevent object overwrites with conditional writes"). A store, gateway or proxy
        that drops or ignores the header lets the write through; then two concurrent publishes
        of one version would both "win" the claim, so nothing is published. The probe rewrites
        the claim with the same body and metadata, so accepting it changes nothing.
        """
        if self.writer.accepts_overwrite(claim_key, self._claim_body, _sha256(self._claim_body)):
            raise StoreError(
                f"{self.url(claim_key)}: the store ignored `If-None-Match: *`: a second conditional write of "
                "the claim succeeded instead of failing with 412 Precondition Failed, so two publishers could "
                "commit the same version; refusing to publish. Use a store (and any proxy in front of it) that "
                "supports S3 conditional writes"
            )

    def _write(self, prefix: str, relative: str, body: bytes | Path, sha256_hex: str | None = None) -> str:
        """Create one object of the version; a stray left under our claim by the publisher we took
        over from (its request still in flight then) is deleted, by its ETag, and the write retried."""
        key = prefix + relative
        sha256_hex = sha256_hex or _sha256(body)  # type: ignore[arg-type]
        for attempt in range(STRAY_ATTEMPTS):
            try:
                return self.writer.create(key, body, sha256_hex, multipart_over=MULTIPART_THRESHOLD)
            except ObjectTakenError as taken:
                if attempt + 1 == STRAY_ATTEMPTS or taken.etag is None or not self._holds_uncommitted(prefix):
                    raise
                self.writer.delete(key, taken.etag)
        raise AssertionError("unreachable")

    def _holds_uncommitted(self, prefix: str) -> bool:
        claim = self.writer.head(prefix + CLAIM_FILE)
        return (
            claim is not None
            and claim.publisher == self.publisher_id
            and self.writer.head(prefix + COMMIT_MARKER) is None
        )

    def _upload(
        self, files: dict[str, Path], expected: dict[str, str], prefix: str, progress: bool, total: int
    ) -> None:
        # One PutObject (or multipart upload) per file through the writer, not boto3's transfer
        # manager: the manager refuses `IfNoneMatch` in extra_args (s3transfer/manager.py,
        # ALLOWED_UPLOAD_ARGS), so it could overwrite a committed version's file.
        bar = _Progress(total, f"{self.manifest.name} -> {self.url(prefix)}", progress)

        def upload(relative: str) -> None:
            self._write(prefix, relative, files[relative], expected[relative])
            bar(files[relative].stat().st_size)

        try:
            with ThreadPoolExecutor(max_workers=TRANSFER_CONCURRENCY) as pool:
                futures = [pool.submit(upload, relative) for relative in files]
                _, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in futures:
                    if future.done() and not future.cancelled() and future.exception() is not None:
                        exc = future.exception()
                        if isinstance(exc, StoreError):
                            raise exc
                        if isinstance(exc, OSError):
                            raise StoreError(f"{self.url(prefix)}: upload failed: {exc}") from None
                        raise exc  # type: ignore[misc]
        finally:
            bar.close()

    def _verify_checksums(self, files: dict[str, Path], expected: dict[str, str], prefix: str) -> None:
        """Each uploaded file's SHA-256, as the store keeps it, against the local file's."""
        from botocore.exceptions import BotoCoreError, ClientError

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

    def _delete_all(self, prefix: str, keep: tuple[str, ...]) -> None:
        """Every object under the prefix but `keep`, each only while it is the object just listed."""
        for relative in self._listing(prefix):
            key = prefix + relative
            stored = None if key in keep else self.writer.head(key)
            if stored is not None:
                self.writer.delete(key, stored.etag)

    def _committed_by_me(self, prefix: str) -> bool:
        try:
            commit = self.writer.head(prefix + COMMIT_MARKER)
        except StoreError:
            return False
        return commit is not None and commit.publisher == self.publisher_id

    def _lost_to(self, prefix: str, version: int) -> VersionLostError | None:
        """If another publisher committed the version or holds its claim, the error that says so."""
        try:
            commit = self.writer.head(prefix + COMMIT_MARKER)
            claim = self.writer.head(prefix + CLAIM_FILE)
        except StoreError:
            return None
        name = self.manifest.name
        if commit is not None and commit.publisher != self.publisher_id:
            return VersionLostError(
                f"model {name} version {version}: publisher {commit.publisher or 'unknown'} committed it first; "
                f"this publish lost the race and left none of its objects ({self.url(prefix)})"
            )
        if claim is not None and claim.publisher != self.publisher_id:
            return VersionLostError(
                f"model {name} version {version}: publisher {claim.publisher or 'unknown'} took this version over "
                f"(--takeover) while this publish ran; this one lost and left none of its objects ({self.url(prefix)})"
            )
        return None

    def _abandon(self, prefix: str) -> bool:
        """Remove this publish's own objects, then its claim (only if still ours). False if it could not."""
        try:
            commit = self.writer.head(prefix + COMMIT_MARKER)
            if commit is not None and commit.publisher == self.publisher_id:
                return True  # committed after all; nothing to undo
            for relative in self._listing(prefix):
                key = prefix + relative
                if relative == CLAIM_FILE:
                    continue
                stored = self.writer.head(key)
                if stored is not None and stored.publisher == self.publisher_id:
                    self.writer.delete(key, stored.etag)
            claim = self.writer.head(prefix + CLAIM_FILE)
            if claim is not None and claim.publisher == self.publisher_id:
                self.writer.delete(prefix + CLAIM_FILE, claim.etag)
            return True
        except StoreError:
            return False


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
    problem = version_problem(number)
    if problem is not None:
        raise StoreError(f"models/{model}.yaml: versions: {problem}")
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
