"""Served versions against the object store: each committed, matching its digest, and every
object of it what the version's checksum list says (the stack's `objectStore.integrity`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from infra.platform.object_store import s3_client, verify_version, version_prefix
from infra.spec.errors import ErrorItem
from infra.spec.manifest import MODELS_DIR, ServedModel
from infra.spec.settings import Integrity, ObjectStoreSettings

LISTING_WARNING = (
    "objectStore.integrity is `listing` for s3://{bucket}/{prefix}: the served versions' objects are checked "
    "to exist, not their contents; a replaced object is caught only by the init container, during the rollout"
)


def verify_served_versions(
    models: Iterable[ServedModel],
    store: ObjectStoreSettings,
    client: Any | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[ErrorItem]:
    """One error per problem of a served version: missing, uncommitted, not the manifest's digest,
    or an object that is missing, extra, or not what the checksum list says (naming its key)."""
    client = client or s3_client(store)
    if store.integrity is Integrity.listing and warn is not None:
        warn(LISTING_WARNING.format(bucket=store.bucket, prefix=store.prefix))
    errors = []
    for model in models:
        labels = {v: label for label, v in model.version_labels.items()}
        for version in model.served_versions:
            prefix = version_prefix(store.prefix, model.manifest.artifact.path, version)
            for problem in verify_version(client, store.bucket, prefix, model.digest(version), store.integrity):
                errors.append(
                    ErrorItem(
                        f"{MODELS_DIR}/{model.name}.yaml",
                        f"environments.{model.environment}.{labels[version]}",
                        f"model {model.name} version {version}: {problem.key}: {problem.message}",
                    )
                )
    return errors
