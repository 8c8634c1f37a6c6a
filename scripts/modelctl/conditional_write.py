"""S3 conditional writes that survive lost replies: each object is created once, and its writer knows it.

Every object of a version is written with `If-None-Match: *` (the claim's takeover with
`If-Match: <ETag>`), tagged with the publisher's id and its SHA-256 in user metadata, and
with S3's SHA-256 additional checksum, which the store verifies on receipt.

Why a 412 is not always a failure: botocore's standard retry mode retries a request whose
reply never arrived (`ConnectionError`/`HTTPClientError`, botocore/retries/standard.py,
`TransientRetryableChecker._TRANSIENT_EXCEPTION_CLS`; urllib3's `ProtocolError` becomes
`ConnectionClosedError`, botocore/httpsession.py) and rewinds a file body first
(botocore/awsrequest.py, `AWSRequest.reset_stream`). When the store had applied the first
attempt, the retry of a conditional write finds the object in place and S3 answers
412 Precondition Failed (S3 User Guide, "How to prevent object overwrites with conditional
writes": "If the object already exists ... the write fails with a 412 Precondition Failed
response"; for If-Match: "If the ETag values do not match, the operation returns a 412").
So on 412 the object is read back (HEAD with checksum mode): our publisher id and our SHA-256
mean the write was ours and succeeded; anything else means another publisher wrote it.
A 409 ConditionalRequestConflict means a concurrent conditional write to the same key was in
flight (S3 API reference, PutObject `If-None-Match`: "If a concurrent operation occurs during
the upload S3 returns a 409 ConditionalRequestConflict response. On a 409 failure you should
retry the upload"; CompleteMultipartUpload `If-None-Match`: "re-initiate the multipart upload
with CreateMultipartUpload and re-upload each part", which a retry of `_send` does). 409 is in
none of botocore's retryable lists (standard.py: transient 500/502/503/504 and RequestTimeout,
throttling codes such as SlowDown), so it is retried here, a few times.
The tests run this against moto 5.2.5 (moto/s3/responses.py): PutObject honours
`If-None-Match: *` and `If-Match` with 412; CompleteMultipartUpload honours `If-None-Match: *`,
but answers a repeated completion of the same upload id with the object before checking it
(so a lost completion reply is a plain success there; S3 may answer 412 or NoSuchUpload, and
the read-back covers both); moto does not check a body against `x-amz-checksum-sha256` (its
`_get_checksum` keeps the value as sent), hence the size check in `is_own`.
Deletes are conditional too (`If-Match: <ETag>`; S3 User Guide, "How to perform conditional
deletes", general purpose and directory buckets): 412 if the object changed since it was
read, 404 NoSuchKey if it is gone, which for a retried delete means done.
"""

from __future__ import annotations

import base64
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.platform.object_store import (
    MULTIPART_ETAG,
    NOT_FOUND,
    StoreError,
    describe,
    error_code,
    sha256_of_checksum,
)

PRECONDITION_FAILED = ("PreconditionFailed", "412")
CONDITIONAL_CONFLICT = ("ConditionalRequestConflict", "409")
CONFLICT_ATTEMPTS = 4
CONFLICT_BACKOFF_SECONDS = 0.2
# User metadata (x-amz-meta-*) on every object a publish writes: who wrote it, and what.
PUBLISHER_METADATA = "publisher"
SHA256_METADATA = "sha256"
CHECKSUM_ALGORITHM = "SHA256"
# Parts of a multipart upload (files over the single-PUT threshold): S3 allows 10,000 parts of
# at least 5 MiB (S3 User Guide, "Amazon S3 multipart upload limits").
PART_SIZE = 64 * 1024**2
MAX_PARTS = 10_000


class ObjectTakenError(StoreError):
    """A conditional write found the key holding another publisher's object (or none, for If-Match)."""

    def __init__(self, url: str, holder: str | None, etag: str | None):
        who = f"publisher {holder}" if holder else "another writer"
        super().__init__(f"{url}: already written by {who}")
        self.url = url
        self.holder = holder
        self.etag = etag


@dataclass(frozen=True)
class StoredObject:
    """What a HEAD tells about an object a publish may have written."""

    etag: str
    publisher: str | None
    sha256: str | None  # as the writer declared it (metadata)
    store_sha256: str | None  # as the store computed it (whole-object additional checksum), if it keeps one
    size: int


class ConditionalWriter:
    """Creates objects in one bucket on behalf of one publisher, recognising its own earlier successes."""

    def __init__(self, client: Any, bucket: str, publisher_id: str):
        self.client = client
        self.bucket = bucket
        self.publisher_id = publisher_id

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def metadata(self, sha256_hex: str) -> dict[str, str]:
        return {PUBLISHER_METADATA: self.publisher_id, SHA256_METADATA: sha256_hex}

    def head(self, key: str) -> StoredObject | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise StoreError(f"{self.url(key)}: cannot read: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.url(key)}: cannot reach the object store: {describe(exc)}") from None
        metadata = head.get("Metadata", {})
        checksum = head.get("ChecksumSHA256")
        if MULTIPART_ETAG.search(head["ETag"]) or head.get("ChecksumType") == "COMPOSITE":
            checksum = None  # a checksum of the parts' checksums, not the object's (see stored_sha256)
        return StoredObject(
            etag=head["ETag"],
            publisher=metadata.get(PUBLISHER_METADATA),
            sha256=metadata.get(SHA256_METADATA),
            store_sha256=sha256_of_checksum(checksum) if checksum else None,
            size=int(head.get("ContentLength", -1)),
        )

    def is_own(self, stored: StoredObject, sha256_hex: str, size: int) -> bool:
        """Written by this publisher with this content. The id is a random UUID of this run, so
        only this run's requests carry it; the size and the store's own SHA-256, when it keeps
        one, must agree (a store that does not check the body against its checksum header, as
        moto does not, could otherwise keep a truncated body under our metadata)."""
        return (
            stored.publisher == self.publisher_id
            and stored.sha256 == sha256_hex
            and stored.size == size
            and stored.store_sha256 in (None, sha256_hex)
        )

    def create(
        self, key: str, body: bytes | Path, sha256_hex: str, if_match: str | None = None, multipart_over: int = 0
    ) -> str:
        """Write `key` only if it does not exist (or, with `if_match`, only over that ETag); its ETag.

        A 412/409 whose object turns out to be ours (a retry after a lost reply) is a success;
        one that is another publisher's raises ObjectTakenError naming it.
        """
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return self._send(key, body, sha256_hex, if_match, multipart_over)
            except _RefusedError as refused:
                code = refused.code
            stored = self.head(key)
            if stored is not None and self.is_own(stored, sha256_hex, _size(body)):
                return stored.etag
            if stored is None and if_match is None and attempt + 1 < CONFLICT_ATTEMPTS:
                # 409 (a concurrent write in flight), or 412 for an object deleted since: try again.
                time.sleep(CONFLICT_BACKOFF_SECONDS * (attempt + 1))
                continue
            if code in CONDITIONAL_CONFLICT and stored is None:
                raise StoreError(f"{self.url(key)}: concurrent conditional writes kept conflicting (409)")
            raise ObjectTakenError(self.url(key), stored.publisher if stored else None, stored.etag if stored else None)
        raise AssertionError("unreachable")

    def accepts_overwrite(self, key: str, body: bytes, sha256_hex: str) -> bool:
        """Write an existing object again with `If-None-Match: *`: True if the store let it through
        (it ignores conditional writes), False on the 412 it must answer."""
        try:
            self._send(key, body, sha256_hex, None, 0)
        except _RefusedError:
            return False
        return True

    def delete(self, key: str, etag: str) -> None:
        """Delete `key` only while it is still the object with `etag` (conditional delete, If-Match);
        gone already (a retry after a lost reply) is done."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return
            if error_code(exc) in PRECONDITION_FAILED:
                raise ObjectTakenError(self.url(key), None, None) from None
            raise StoreError(f"{self.url(key)}: cannot delete: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.url(key)}: cannot reach the object store: {describe(exc)}") from None

    # requests ----------------------------------------------------------------------------------

    def _send(self, key: str, body: bytes | Path, sha256_hex: str, if_match: str | None, multipart_over: int) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            if isinstance(body, Path) and multipart_over and body.stat().st_size > multipart_over:
                return self._send_in_parts(key, body, sha256_hex, condition)
            checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
            with contextlib.ExitStack() as stack:
                payload = stack.enter_context(body.open("rb")) if isinstance(body, Path) else body
                return self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=payload,
                    # The store refuses a body that does not hash to the value (S3 API reference,
                    # PutObject, x-amz-checksum-sha256): the file changed since it was hashed, or
                    # the bytes did on the way. ChecksumAlgorithm names it (x-amz-sdk-checksum-algorithm).
                    ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                    ChecksumSHA256=checksum,
                    Metadata=self.metadata(sha256_hex),
                    **condition,
                )["ETag"]
        except ClientError as exc:
            code = error_code(exc)
            if code in PRECONDITION_FAILED + CONDITIONAL_CONFLICT:
                raise _RefusedError(code) from None
            raise StoreError(f"{self.url(key)}: cannot write: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self.url(key)}: cannot reach the object store: {describe(exc)}") from None

    def _send_in_parts(self, key: str, path: Path, sha256_hex: str, condition: dict[str, str]) -> str:
        """A multipart upload whose completion carries the condition: boto3's transfer manager cannot
        pass it (s3transfer/manager.py `ALLOWED_UPLOAD_ARGS` has no IfNoneMatch, and
        s3transfer/upload.py `COMPLETE_MULTIPART_ARGS` forwards none to CompleteMultipartUpload),
        while S3 takes `If-None-Match` on CompleteMultipartUpload (S3 API reference)."""
        size = path.stat().st_size
        part_size = max(PART_SIZE, math.ceil(size / MAX_PARTS))
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm=CHECKSUM_ALGORITHM, Metadata=self.metadata(sha256_hex)
        )
        upload_id = upload["UploadId"]
        try:
            parts = []
            with path.open("rb") as handle:
                for number in range(1, MAX_PARTS + 1):
                    chunk = handle.read(part_size)
                    if not chunk:
                        break
                    answer = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                    )
                    parts.append(
                        {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": answer["ChecksumSHA256"]}
                    )
            return self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )["ETag"]
        except BaseException:
            # An upload completed before its reply was lost is no longer abortable (NoSuchUpload).
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise


def _size(body: bytes | Path) -> int:
    return body.stat().st_size if isinstance(body, Path) else len(body)


class _RefusedError(Exception):
    """The store refused a conditional write (412 or 409); whose object holds the key is still unknown."""

    def __init__(self, code: str | None):
        super().__init__(code)
        self.code = code
