"""Served versions against the object store: each exists, is committed, and matches its digest."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infra.platform.object_store import check_version, s3_client, version_prefix
from infra.spec.errors import ErrorItem
from infra.spec.manifest import MODELS_DIR, ServedModel
from infra.spec.settings import ObjectStoreSettings


def verify_served_versions(
    models: Iterable[ServedModel], store: ObjectStoreSettings, client: Any | None = None
) -> list[ErrorItem]:
    """One error per served version that is missing, uncommitted or not what the manifest says."""
    client = client or s3_client(store)
    errors = []
    for model in models:
        labels = {v: label for label, v in model.version_labels.items()}
        for version in model.served_versions:
            prefix = version_prefix(store.prefix, model.manifest.artifact.path, version)
            problem = check_version(client, store.bucket, prefix, model.digest(version))
            if problem is not None:
                errors.append(
                    ErrorItem(
                        f"{MODELS_DIR}/{model.name}.yaml",
                        f"environments.{model.environment}.{labels[version]}",
                        f"model {model.name} version {version}: {problem.key}: {problem.message}",
                    )
                )
    return errors
