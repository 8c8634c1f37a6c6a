"""Where a model's training data and frozen evaluation set come from (`training.data`, `training.evaluation`):
a repository file, or the object store; what was read is recorded (URI, ETag, object version, SHA-256)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.spec.errors import ConfigError
from infra.spec.manifest import MODELS_DIR, OBJECT_STORE_SCHEME, ModelManifest
from infra.spec.paths import is_inside

# A partition is a folder `dt=YYYY-MM-DD/` (Hive-style, as Athena, Spark and Glue write them);
# ISO dates sort as strings, so the newest is the largest.
PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/$")
DATA_SUFFIX = ".csv"
# What one run reads at most: training here runs on a CI runner, not on a cluster.
MAX_DATA_BYTES = 256 * 1024 * 1024


class DataError(Exception):
    """The data source or evaluation set cannot be read, or is not what the manifest recorded."""


@dataclass(frozen=True)
class DataFile:
    """One file read, with what identifies its content."""

    uri: str
    text: str
    sha256: str
    etag: str | None = None
    version_id: str | None = None

    def provenance(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"uri": self.uri, "sha256": self.sha256}
        if self.etag:
            entry["etag"] = self.etag
        if self.version_id and self.version_id != "null":
            entry["version_id"] = self.version_id
        return entry


@dataclass(frozen=True)
class TrainingData:
    source: str  # as the manifest says
    partition: str | None  # `dt=...` of an object-store source
    files: tuple[DataFile, ...]


ClientFactory = Callable[[], Any]


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(OBJECT_STORE_SCHEME) :].partition("/")
    return bucket, key


def _read_repository(root: Path, relative: str, display: str, field: str) -> DataFile:
    path = root / relative
    if not is_inside(root, path):
        raise ConfigError.single(display, field, f"{relative} resolves outside the repository")
    if not path.is_file():
        raise ConfigError.single(display, field, f"Got {relative!r}; no such file under the repository root")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise DataError(f"{relative}: over {MAX_DATA_BYTES} bytes, the limit of one run")
    raw = path.read_bytes()
    return DataFile(relative, raw.decode("utf-8"), hashlib.sha256(raw).hexdigest())


def _read_object(client: Any, bucket: str, key: str) -> DataFile:
    from botocore.exceptions import BotoCoreError, ClientError

    from infra.platform.object_store import describe

    uri = f"{OBJECT_STORE_SCHEME}{bucket}/{key}"
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        if response.get("ContentLength", 0) > MAX_DATA_BYTES:
            raise DataError(f"{uri}: over {MAX_DATA_BYTES} bytes, the limit of one run")
        raw = response["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise DataError(f"{uri}: cannot read: {describe(exc)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{uri}: not UTF-8 text") from None
    return DataFile(uri, text, hashlib.sha256(raw).hexdigest(), response.get("ETag"), response.get("VersionId"))


def newest_partition(client: Any, uri: str) -> tuple[str, list[str]]:
    """The newest `dt=YYYY-MM-DD/` under the prefix `uri`, and the keys of its CSV files."""
    from botocore.exceptions import BotoCoreError, ClientError

    from infra.platform.object_store import describe

    bucket, prefix = _split(uri)
    partitions = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) :]
                if PARTITION.match(name):
                    partitions.append(name)
        if not partitions:
            raise DataError(f"{uri}: no partition `dt=YYYY-MM-DD/` under this prefix")
        newest = max(partitions)
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + newest)
            for item in page.get("Contents", [])
            if item["Key"].endswith(DATA_SUFFIX)
        ]
    except (ClientError, BotoCoreError) as exc:
        raise DataError(f"{uri}: cannot list: {describe(exc)}") from None
    if not keys:
        raise DataError(f"{uri}{newest}: the newest partition holds no {DATA_SUFFIX} file")
    return newest.rstrip("/"), sorted(keys)


def read_training_data(root: Path, manifest: ModelManifest, client: ClientFactory | None) -> TrainingData:
    """The repository file, or every CSV of the newest partition under the object-store prefix."""
    display = f"{MODELS_DIR}/{manifest.name}.yaml"
    source = manifest.training.data
    if not source.startswith(OBJECT_STORE_SCHEME):
        return TrainingData(source, None, (_read_repository(root, source, display, "training.data"),))
    if client is None:
        raise DataError(f"{display}: training.data is in an object store ({source}); name the stack whose store it is")
    s3 = client()
    partition, keys = newest_partition(s3, source)
    bucket, _ = _split(source)
    files = tuple(_read_object(s3, bucket, key) for key in keys)
    if sum(len(f.text) for f in files) > MAX_DATA_BYTES:
        raise DataError(f"{source}{partition}/: over {MAX_DATA_BYTES} bytes, the limit of one run")
    return TrainingData(source, partition, files)


def read_evaluation(root: Path, manifest: ModelManifest, client: ClientFactory | None) -> DataFile:
    """The frozen evaluation set, refused unless its SHA-256 is the one the manifest records."""
    display = f"{MODELS_DIR}/{manifest.name}.yaml"
    evaluation = manifest.training.evaluation
    if evaluation.path.startswith(OBJECT_STORE_SCHEME):
        if client is None:
            raise DataError(f"{display}: training.evaluation.path is in an object store; name the stack whose it is")
        found = _read_object(client(), *_split(evaluation.path))
    else:
        found = _read_repository(root, evaluation.path, display, "training.evaluation.path")
    if found.sha256 != evaluation.sha256:
        raise ConfigError.single(
            display,
            "training.evaluation.sha256",
            f"{found.uri} has SHA-256 {found.sha256}, the manifest records {evaluation.sha256}: the frozen "
            "evaluation set changed; a new one is a reviewed manifest change (set the new digest)",
        )
    return found
