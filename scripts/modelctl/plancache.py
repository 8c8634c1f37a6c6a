"""The plan cache: what a program declared, kept across runs under a content hash of everything
that determines it, so a plan re-runs only what its change can reach.

A key hashes the cache format, the Python interpreter and every installed distribution, the
modelctl modules that write and read the records, and what the caller adds (the program's
files, the stack, a manifest's content). An entry is used only when its stored key equals the
key asked for, so a hit is exactly what a run would give; an unreadable or corrupt entry is a
miss, and the run that follows overwrites it. Entries are written to a temporary file and
renamed into place, so a reader never sees half an entry, even with plans running side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pydantic_core

from infra.offline import DeclaredResource
from infra.spec import yamlio

# Bump when the layout of what is stored changes.
FORMAT = 1
CACHE_ENV = "MODELCTL_PLAN_CACHE"
DEFAULT_DIRECTORY = Path("build") / ".plan-cache"
# The modules whose code shapes a stored record (the driver writes base runs, these read and
# write entries): a change to them changes every key.
_RECORD_MODULES = ("snapshot.py", "snapshot_driver.py", "plancache.py", "incremental.py")


def default_directory(root: Path) -> Path:
    """`$MODELCTL_PLAN_CACHE`, else `build/.plan-cache/` of the project (ignored by git; CI can
    keep it between runs, e.g. with actions/cache)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else root / DEFAULT_DIRECTORY


@cache
def environment_fingerprint() -> str:
    """The interpreter and every installed distribution with its version: the Pulumi SDK and
    providers shape what the mocks record, pydantic and PyYAML what a manifest becomes."""
    distributions = sorted(
        {(d.metadata["Name"] or "", d.version) for d in importlib.metadata.distributions()},
    )
    modules = Path(__file__).parent
    code = [hashlib.sha256((modules / name).read_bytes()).hexdigest() for name in _RECORD_MODULES]
    document = [sys.version, sys.implementation.name, platform.machine(), distributions, code]
    return hashlib.sha256(json.dumps(document).encode()).hexdigest()


def cache_key(kind: str, *parts: Any) -> str:
    """The key of an entry of `kind` determined by `parts` (JSON-serialisable) and the environment."""
    document = [FORMAT, kind, environment_fingerprint(), *parts]
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


class PlanCache:
    """JSON entries under a directory, one file per key."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.hits = 0
        self.misses = 0
        # Entries this process read (hits) or wrote: what `prune` keeps.
        self.used: set[Path] = set()

    def _path(self, kind: str, key: str) -> Path:
        return self.directory / kind / key[:2] / f"{key}.json"

    def get(self, kind: str, key: str) -> Any | None:
        """The value stored under `key`, or None (absent, unreadable, or not this key's)."""
        try:
            # pydantic-core's parser (jiter): the same values as json.loads, type for type
            # (tests/test_incremental.py compares them), a third faster on a fleet's entries.
            entry = pydantic_core.from_json(self._path(kind, key).read_bytes())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
            self.misses += 1
            return None
        self.hits += 1
        self.used.add(self._path(kind, key))
        return entry.get("value")

    def put(self, kind: str, key: str, value: Any) -> None:
        """Store `value` under `key`, atomically; a cache that cannot be written is no cache."""
        path = self._path(kind, key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as handle:
                json.dump({"format": FORMAT, "key": key, "value": value}, handle, separators=(",", ":"))
            os.replace(temporary, path)
            self.used.add(path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def prune(self) -> tuple[int, int]:
        """Delete every entry this process neither read nor wrote (and leftover temporary files):
        what a plan of the newest revision did not need. Returns (kept, removed).

        Entries are never rewritten in place, so without pruning a cache kept across runs grows
        with every program change and every manifest version; pruned after the plan of the
        default branch's tip, it holds one fleet's entries (plus the base side's).
        """
        kept = removed = 0
        if not self.directory.is_dir():
            return kept, removed
        for directory, _, files in os.walk(self.directory):
            for name in files:
                path = Path(directory) / name
                if path in self.used:
                    kept += 1
                    continue
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return kept, removed


class ManifestDocuments:
    """Parsed manifest documents in the plan cache, by content (infra.spec.manifest.DocumentStore).

    Parsing a thousand manifests costs seconds, each time the plan runs. An entry is keyed by
    the manifest's bytes, the reading code (`infra/spec/yamlio.py`: its caps and checks decide
    what is accepted) and the environment (PyYAML's version). It is stored only when it reads
    back as exactly the parsed document, type for type (a date or NaN would not survive JSON;
    mappings with keys other than strings, such as `versions`' numbers, are kept as pairs), so
    a hit is what parsing those bytes gives.
    """

    def __init__(self, cache: PlanCache):
        self.cache = cache
        self.reader = hashlib.sha256(Path(yamlio.__file__).read_bytes()).hexdigest()

    def _key(self, content: bytes) -> str:
        return cache_key("manifest-document", self.reader, hashlib.sha256(content).hexdigest())

    def get(self, content: bytes) -> Any | None:
        stored = self.cache.get("manifest", self._key(content))
        try:
            return _from_json(stored) if stored is not None else None
        except (TypeError, ValueError):
            return None

    def put(self, content: bytes, document: Any) -> None:
        try:
            stored = _to_json(document)
            exact = _identical(_from_json(json.loads(json.dumps(stored, allow_nan=False))), document)
        except (TypeError, ValueError, RecursionError):
            exact = False
        if exact:
            self.cache.put("manifest", self._key(content), stored)


# A mapping whose keys are not all strings (or that holds this key), as JSON: {_PAIRS: [[k, v], ...]}.
_PAIRS = "\x00pairs"


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _PAIRS not in value:
            return {k: _to_json(v) for k, v in value.items()}
        return {_PAIRS: [[k, _to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_PAIRS), list):
            return {k: _from_json(v) for k, v in value[_PAIRS]}
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _identical(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout (1, 1.0 and True are equal, not identical)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            _identical(ka, kb) and _identical(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# Records of declared resources ---------------------------------------------------------------


def resource_record(resource: DeclaredResource) -> dict[str, Any]:
    """A resource as stored: its state only where it differs from its inputs (the auto-name,
    cloud stand-ins), which halves what a thousand models take to store and read back."""
    state = {k: v for k, v in resource.state.items() if k not in resource.inputs or resource.inputs[k] != v}
    dropped = [k for k in resource.inputs if k not in resource.state]
    return {
        "urn": resource.urn,
        "type": resource.type,
        "name": resource.name,
        "parent": resource.parent,
        "custom": resource.custom,
        "provider": resource.provider,
        "inputs": resource.inputs,
        "state": state,
        "stateDrops": dropped,
        "dependencies": list(resource.dependencies),
        "remote": resource.remote,
        "providers": resource.providers,
    }


def resource_from_record(record: dict[str, Any]) -> DeclaredResource:
    inputs = record["inputs"]
    state = {k: v for k, v in inputs.items() if k not in record["stateDrops"]} | record["state"]
    return DeclaredResource(
        urn=record["urn"],
        type=record["type"],
        name=record["name"],
        parent=record["parent"],
        custom=record["custom"],
        provider=record["provider"],
        inputs=inputs,
        state=state,
        dependencies=tuple(record["dependencies"]),
        remote=record["remote"],
        providers=record["providers"],
    )


def records(resources: Iterable[DeclaredResource]) -> list[dict[str, Any]]:
    return [resource_record(r) for r in resources]


def resources_from_records(stored: Sequence[dict[str, Any]]) -> list[DeclaredResource] | None:
    """The resources of stored records, or None when they are not what this code writes."""
    try:
        return [resource_from_record(r) for r in stored]
    except (KeyError, TypeError, AttributeError):
        return None
