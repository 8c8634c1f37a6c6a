"""Writing an offline run's Kubernetes objects as YAML files, one object per file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from infra.offline import DeclaredResource, OfflineRun

INDEX_FILE = ".modelctl-render"
# One path segment, never `.`/`..`, no separator: Kubernetes object names (DNS-1123
# subdomains) and component names (model names, `platform`) all are.
SAFE_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class RenderError(ValueError):
    """An object's name would not make a file name inside the render directory."""


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (models.config, the fetch script) as `|` blocks, readable in diffs."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


_FIRST_KEYS = ("apiVersion", "kind", "metadata")


def _canonical(value: object, top: bool = False) -> object:
    """Keys sorted (the wire format keeps no order), apiVersion/kind/metadata first."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (_FIRST_KEYS.index(k) if top and k in _FIRST_KEYS else len(_FIRST_KEYS), k))
        return {k: _canonical(value[k]) for k in keys}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def dump_yaml(document: object) -> str:
    """YAML of a Kubernetes object as the render and the plan's diffs show it, in a stable order."""
    return yaml.dump(_canonical(document, top=True), Dumper=_BlockStyleDumper, sort_keys=False, width=120)


def group_of(resource: DeclaredResource, by_urn: dict[str, DeclaredResource]) -> str:
    """The component a resource belongs to (`platform`, a model name); "" for the stack's own."""
    parent = by_urn.get(resource.parent or "")
    return parent.name if parent is not None else ""


def _file_name(group: str, kind: str, name: object) -> Path:
    """`<group>/<kind>-<name>.yaml`, refusing any part that is not one plain path segment.

    The names come from what a pull request declares (manifests, stack settings), so they are
    checked here, where they become file names, whatever validated them upstream.
    """
    for part, value in (("component", group), ("kind", kind.lower()), ("name", name)):
        if part == "component" and value == "":
            continue
        if not isinstance(value, str) or not SAFE_SEGMENT.match(value) or value in (".", ".."):
            raise RenderError(f"refusing to render an object whose {part} {value!r} is not a plain file name")
    return Path(group) / f"{kind.lower()}-{name}.yaml"


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
    root = directory.resolve()
    for resource in run.kubernetes_objects():
        obj = resource.object
        path = directory / _file_name(group_of(resource, by_urn), obj["kind"], obj["metadata"]["name"])
        # Belt and braces: the names are validated, and the file must still land in the directory.
        if not path.parent.resolve().is_relative_to(root):
            raise RenderError(f"{path}: outside the render directory {directory}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_yaml(obj), encoding="utf-8")
        written.append(path)
    written.sort()
    index.write_text("".join(f"{p.relative_to(directory)}\n" for p in written), encoding="utf-8")
    return written
