"""Edits of a manifest that keep its comments and layout, so the pull request is a few-line diff.

Every edit is validated as a whole manifest before the file is replaced (atomically):
an edit never leaves an invalid or half-written manifest behind.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from infra.spec.manifest import MODELS_DIR, ModelManifest, manifest_path, parse_manifest, read_manifest
from infra.spec.yamlio import check_events, parse_yaml, read_text


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, key order, flow/block style and quotes survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load(root: Path, model: str) -> ModelManifest:
    """One model's manifest, read and validated (infra.spec.manifest.read_manifest)."""
    return read_manifest(root, model)


def edit(root: Path, model: str, change: Callable[[CommentedMap], None]) -> ModelManifest:
    """Apply `change` to the round-trip document of `model`'s manifest; validate; write atomically."""
    path = manifest_path(root, model)
    display = f"{MODELS_DIR}/{path.name}"
    yaml = _yaml()
    text = read_text(path, display)
    check_events(text, display)  # the same bounds as every other read, before ruamel builds anything
    document = yaml.load(text)
    change(document)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    new_text = buffer.getvalue()
    manifest = parse_manifest(parse_yaml(new_text, display), display, model)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(new_text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return manifest


def _flow_map(values: dict[str, Any]) -> CommentedMap:
    mapping = CommentedMap(values)
    mapping.fa.set_flow_style()
    return mapping


def add_version(
    document: CommentedMap,
    version: int,
    digest: str,
    metrics: dict[str, float],
    contract: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> None:
    """Append `versions.<version>` in the style of the entries already there; the contract as
    one line per tensor, so a pull request shows each input and output."""
    versions = document["versions"]
    if version in versions:
        raise ValueError(f"version {version} is already in the manifest; published versions are immutable")
    entry = CommentedMap()
    entry["digest"] = digest
    entry["metrics"] = _flow_map(dict(sorted(metrics.items())))
    if contract is not None:
        entry["contract"] = CommentedMap(
            (part, CommentedMap((name, _flow_map(copy.deepcopy(t))) for name, t in contract[part].items()))
            for part in ("inputs", "outputs")
        )
    versions[version] = entry


def set_label(document: CommentedMap, environment: str, label: str, version: int) -> None:
    """`environments.<environment>.<label> = version`, creating the environment entry if needed."""
    environments = document.setdefault("environments", CommentedMap())
    served = environments.get(environment)
    if served is None:
        served = CommentedMap()
        environments[environment] = served
    served[label] = version


def set_canary(document: CommentedMap, environment: str, version: int, weight: int) -> None:
    """`environments.<environment>.canary = {version, weight}` (flow style, one line)."""
    document["environments"][environment]["canary"] = _flow_map({"version": version, "weight": weight})


def set_shadow(document: CommentedMap, environment: str, version: int, percent: int) -> None:
    """`environments.<environment>.shadow = {version, percent}` (flow style, one line; docs/shadow.md)."""
    document["environments"][environment]["shadow"] = _flow_map({"version": version, "percent": percent})


def drop_label(document: CommentedMap, environment: str, label: str) -> None:
    served = document.get("environments", {}).get(environment)
    if served is not None and label in served:
        del served[label]
