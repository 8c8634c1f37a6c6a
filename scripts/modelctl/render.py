"""Writing an offline run's Kubernetes objects as YAML files, one object per file."""

from __future__ import annotations

from pathlib import Path

import yaml

from infra.offline import DeclaredResource, OfflineRun

INDEX_FILE = ".modelctl-render"


def group_of(resource: DeclaredResource, by_urn: dict[str, DeclaredResource]) -> str:
    """The component a resource belongs to (`platform`, a model name); "" for the stack's own."""
    parent = by_urn.get(resource.parent or "")
    return parent.name if parent is not None else ""


def render(run: OfflineRun, directory: Path) -> list[Path]:
    """Write every Kubernetes object of `run` under `directory/<component>/`; return the files.

    Files this command wrote before (listed in the index) are removed first, so a model that
    left the stack leaves no stale YAML behind; nothing else in the directory is touched.
    """
    directory.mkdir(parents=True, exist_ok=True)
    index = directory / INDEX_FILE
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            stale = directory / line
            if line and stale.is_file() and stale.resolve().is_relative_to(directory.resolve()):
                stale.unlink()
    written = []
    by_urn = run.by_urn()
    for resource in run.kubernetes_objects():
        obj = resource.object
        name = obj["metadata"]["name"]
        path = directory / group_of(resource, by_urn) / f"{obj['kind'].lower()}-{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
        written.append(path)
    written.sort()
    index.write_text("".join(f"{p.relative_to(directory)}\n" for p in written), encoding="utf-8")
    return written
