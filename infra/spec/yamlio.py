"""Reading one YAML document (a manifest, a stack file) with every problem as a ConfigError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.spec.errors import ConfigError, ErrorItem

# libyaml's parser when PyYAML was built with it (the PyPI wheels are): ~10x faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def read_yaml(path: Path, display: str) -> Any:
    """Parse one YAML document, turning every parse problem into a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ErrorItem(display, "", f"cannot read file: {exc}")]) from None
    try:
        documents = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except yaml.reader.ReaderError as exc:
        message = f"invalid YAML at character {exc.position + 1}: unacceptable character {exc.character!r}"
        raise ConfigError([ErrorItem(display, "", message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError([ErrorItem(display, "", f"invalid YAML{where}: {problem}")]) from None
    except RecursionError:
        raise ConfigError([ErrorItem(display, "", "invalid YAML: nesting too deep")]) from None
    if len(documents) > 1:
        raise ConfigError([ErrorItem(display, "", f"expected one YAML document, found {len(documents)}")])
    if not documents or documents[0] is None:
        raise ConfigError([ErrorItem(display, "", "file is empty; expected a mapping of manifest fields")])
    return documents[0]
