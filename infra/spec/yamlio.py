"""Reading one YAML document (a manifest, a stack file) with every problem as a ConfigError naming the file.

Pull requests from anyone are planned, so a file here may be hostile. Reading is bounded
whatever the content: the file's size is checked before it is read (and no more than the
cap is ever read), and the parser's event stream is scanned before anything is built from
it, refusing anchors and aliases, nesting deeper than `MAX_DEPTH` and more than `MAX_NODES`
nodes. Below those caps, the cost of building and validating a document grows with its size
(`scripts/bench_input.py` measures it; the README states the figures).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from infra.spec.errors import ConfigError, ErrorItem

# A manifest or a stack file is a few KiB; 1 MiB leaves room for years of `versions`.
MAX_FILE_BYTES = 1024 * 1024
# Manifests nest about 5 levels deep, stack files about 6.
MAX_DEPTH = 64
# Nodes (scalars, sequences, mappings) per file: a manifest has about 100, a stack file 150.
MAX_NODES = 20_000

# libyaml's parser when PyYAML was built with it (the PyPI wheels are): ~10x faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_COLLECTION_START = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_COLLECTION_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """Safe loader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _error(display: str, message: str, field: str = "") -> ConfigError:
    return ConfigError([ErrorItem(display, field, message)])


def read_bounded(path: Path, display: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; never reads more than `limit + 1`.

    Opened without blocking (a FIFO named like a manifest would otherwise hang the reader),
    then checked on the open descriptor, so what is checked is what is read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise _error(display, f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _error(display, "not a regular file")
        if info.st_size > limit:
            raise _error(display, f"file is {info.st_size} bytes; the limit is {limit} bytes ({limit // 1024} KiB)")
        chunks = []
        remaining = limit + 1  # the file may grow after fstat: read one byte past the cap at most
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise _error(display, f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > limit:
        raise _error(display, f"file is more than {limit} bytes ({limit // 1024} KiB), the limit")
    return data


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def check_events(text: str, display: str) -> None:
    """Refuse anchors/aliases, nesting deeper than MAX_DEPTH, more than MAX_NODES nodes, and
    mapping keys that are sequences or mappings.

    Runs over the parser's events (a stream: no tree is built, and it stops at the first
    problem), before the document is composed. Aliases are why: PyYAML composes an alias as
    the anchored node itself and constructs it as the same Python object, so ten nested
    aliases of ten items each stand for 10^10 values, which validation (and any walk of the
    data) visits one by one: the "billion laughs" of the issue ran for minutes and past 6 GB.
    The CSafeLoader composes in C (PyYAML yaml/_yaml.pyx, `CParser._compose_node`), so a
    Python `compose_node` override would never run; scanning the events works for both the C
    and the pure-Python loader. Nothing in a manifest or stack file needs an alias.

    A complex key (`? [a, b]`, `{[a]: 1}`) is valid YAML, but PyYAML constructs it as a list or
    dict, which cannot be a Python dict key: construction fails with a TypeError naming no file.
    Every key this project reads is a scalar, so a collection in key position is refused here.
    """
    depth = 0
    nodes = 0
    # Per open collection: [is a mapping, its next node is a key, the key or index of the node
    # being read], for the field path of a complex key.
    open_collections: list[list[Any]] = []
    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise _error(
                    display,
                    f"YAML alias *{event.anchor}{_where(event.start_mark)}: anchors and aliases are not "
                    "accepted here; write the value out",
                )
            if not isinstance(event, _NODE_EVENTS + _COLLECTION_END):
                continue
            if getattr(event, "anchor", None) is not None:
                raise _error(
                    display,
                    f"YAML anchor &{event.anchor}{_where(event.start_mark)}: anchors and aliases are not "
                    "accepted here; write the value out",
                )
            if isinstance(event, _COLLECTION_END):
                depth -= 1
                open_collections.pop()
                continue
            if open_collections:
                parent = open_collections[-1]
                if not parent[0]:
                    parent[2] += 1
                elif parent[1]:
                    if isinstance(event, _COLLECTION_START):
                        kind = "mapping" if isinstance(event, yaml.MappingStartEvent) else "sequence"
                        raise _error(
                            display,
                            f"a {kind} as a mapping key{_where(event.start_mark)}: keys are plain values "
                            "(a name or a number)",
                            ".".join(str(c[2]) for c in open_collections[:-1]),
                        )
                    parent[2] = getattr(event, "value", "")
                    parent[1] = False
                else:
                    parent[1] = True
            nodes += 1
            if nodes > MAX_NODES:
                raise _error(display, f"more than {MAX_NODES} YAML nodes{_where(event.start_mark)}; the limit")
            if isinstance(event, _COLLECTION_START):
                is_mapping = isinstance(event, yaml.MappingStartEvent)
                open_collections.append([is_mapping, is_mapping, "" if is_mapping else -1])
                depth += 1
                if depth > MAX_DEPTH:
                    raise _error(
                        display, f"nested more than {MAX_DEPTH} levels deep{_where(event.start_mark)}; the limit"
                    )
    except yaml.YAMLError:
        return  # a syntax error: the loader reports it with its position, below


def parse_yaml(text: str, display: str) -> Any:
    """Parse one YAML document within the bounds, every problem a ConfigError naming the file."""
    if len(text) > MAX_FILE_BYTES:
        raise _error(display, f"document is more than {MAX_FILE_BYTES} characters, the limit")
    check_events(text, display)
    try:
        documents = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except yaml.reader.ReaderError as exc:
        message = f"invalid YAML at character {exc.position + 1}: unacceptable character {exc.character!r}"
        raise _error(display, message) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise _error(display, f"invalid YAML{_where(mark)}: {problem}") from None
    except TypeError as exc:
        # Not reached past check_events, which refuses collections as keys; kept so that no
        # unhashable key can end in a traceback naming no file.
        raise _error(display, f"invalid YAML: a mapping key that is not a plain value ({exc})") from None
    except RecursionError:
        # Not reached within MAX_DEPTH; kept so that no nesting can end in a traceback.
        raise _error(display, "invalid YAML: nesting too deep") from None
    except ValueError as exc:
        # Python refuses int() of more than 4300 digits (sys.int_info.default_max_str_digits,
        # CVE-2020-10735); PyYAML's int constructor passes that ValueError through.
        if "digits" in str(exc):
            raise _error(display, "an integer with more than 4300 digits; write a smaller number") from None
        raise _error(display, f"invalid YAML value: {exc}") from None
    if len(documents) > 1:
        raise _error(display, f"expected one YAML document, found {len(documents)}")
    if not documents or documents[0] is None:
        raise _error(display, "file is empty; expected a mapping of manifest fields")
    return documents[0]


def read_text(path: Path, display: str) -> str:
    """The UTF-8 text of a file of at most MAX_FILE_BYTES, as a ConfigError naming the file otherwise."""
    return decode_text(read_bounded(path, display), display)


def decode_text(data: bytes, display: str) -> str:
    """`data` as UTF-8 text, or a ConfigError naming the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(display, f"cannot read file: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_yaml(path: Path, display: str) -> Any:
    """Read (at most MAX_FILE_BYTES) and parse one YAML document; every problem a ConfigError naming the file."""
    return parse_yaml(read_text(path, display), display)
