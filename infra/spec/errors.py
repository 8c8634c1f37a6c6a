"""One error type for bad manifests and stack files, each problem naming its file and field path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

# pydantic's `finite_number` error, and the same rule for numbers inside free-form values.
NON_FINITE = "not a finite number: .inf, -.inf and .nan have no JSON form (plans, Flagger, charts); write a number"


@dataclass(frozen=True, order=True)
class ErrorItem:
    """One problem: the file, the dotted field path inside it (empty for the whole file), what is wrong."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field or '<file>'}: {self.message}"


class ConfigError(Exception):
    """Raised when any manifest or stack file is invalid; carries every problem found, not just the first."""

    def __init__(self, errors: Iterable[ErrorItem]):
        self.errors: list[ErrorItem] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @classmethod
    def single(cls, file: str, field: str, message: str) -> ConfigError:
        return cls([ErrorItem(file, field, message)])


class FieldProblemsError(ValueError):
    """Raised inside a model validator to report problems at field paths relative to that model.

    Pydantic reports a model validator's error at the model's own location; this keeps
    the exact paths (`environments.prod.stable`) so the message can name them.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.problems))


def dotted(loc: Iterable[object]) -> str:
    # pydantic locates a dict key's error at `<key>.[key]`; the key alone names it.
    return ".".join(str(part) for part in loc if part != "[key]")


def pydantic_errors(file: str, exc: ValidationError, prefix: str = "") -> list[ErrorItem]:
    """Turn a pydantic ValidationError into ErrorItems with dotted paths and readable messages."""
    items: list[ErrorItem] = []
    for err in exc.errors(include_url=False):
        loc = dotted(err["loc"])
        base = ".".join(p for p in (prefix, loc) if p)
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, FieldProblemsError):
            for path, message in original.problems:
                items.append(ErrorItem(file, ".".join(p for p in (base, path) if p), message))
            continue
        items.append(ErrorItem(file, base, _message(err)))
    return items


def _message(err: dict) -> str:
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `modelctl schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    if kind == "finite_number":
        return f"Got {got!r}; {NON_FINITE}"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind.endswith("_type") or kind in {"string_pattern_mismatch", "enum", "literal_error"} or "parsing" in kind:
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{message}; got {shown}"
    return message
