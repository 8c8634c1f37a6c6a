"""Field rules shared by manifests, stack files and the CLI: version numbers, finite numbers, stack names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from infra.spec.errors import NON_FINITE, FieldProblemsError

# TF-Serving holds a version as int64: ModelServerConfig's `version_labels` is
# `map<string, int64>` (tensorflow/serving@9d981c5 tensorflow_serving/config/
# model_server_config.proto:63), the `specific` policy's `versions` is `repeated int64`
# (tensorflow_serving/config/file_system_storage_path_source.proto:28), and a version is a
# directory name parsed by `absl::SimpleAtoi` into an int64_t, which fails on overflow
# (tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc:87-89). The
# protobuf text-format parser refuses a larger literal ("Value out of range"), so the server
# would not start. Version 0 is valid to TF-Serving (model_server_config.proto:58 labels it
# in its example); this project's versions start at 1, as they always have.
VERSION_MIN = 1
VERSION_MAX = 2**63 - 1
VERSIONS_ALLOWED = f"a whole number from {VERSION_MIN} to 2^63-1 ({VERSION_MAX}, TF-Serving's int64)"


def version_problem(value: int) -> str | None:
    """Why `value` cannot be a version number, or None."""
    if VERSION_MIN <= value <= VERSION_MAX:
        return None
    return f"Got {value}; a version is {VERSIONS_ALLOWED}"


def _version(value: int) -> int:
    problem = version_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# The bounds are checked by `_version` (for a message that says what a version is) and
# published in the JSON Schema for editors.
VersionNumber = Annotated[
    int,
    Field(strict=True, json_schema_extra={"minimum": VERSION_MIN, "maximum": VERSION_MAX}),
    AfterValidator(_version),
]


def non_finite_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first infinite or NaN float inside `value` (a parsed YAML or JSON
    value), '' for `value` itself; None when every number is finite.

    JSON has no Infinity or NaN (RFC 8259 section 6), so such a value cannot reach a plan, a
    Flagger MetricTemplate or an SVG; YAML spells them `.inf` and `.nan` (YAML 1.1/1.2 core).
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_path(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def finite(value: Any) -> Any:
    """`value`, or a FieldProblemsError at the path of its first infinite or NaN number."""
    path = non_finite_path(value)
    if path is not None:
        raise FieldProblemsError([(path, NON_FINITE)])
    return value


# A free-form value (a tensor default, an example request, Helm values) whose numbers must be
# finite; typed float fields get the same rule from `allow_inf_nan=False` in the model config.
FiniteValue = Annotated[Any, AfterValidator(finite)]


# Pulumi's stack names: at most 100 of [A-Za-z0-9_.-] (pulumi/pulumi@1b59498
# sdk/go/common/tokens/stack_name.go:51-86, ParseStackName, which the Pulumi Cloud backend's
# ValidateStackName calls, pkg/backend/httpstate/backend.go:1159-1181). Pulumi allows a
# leading '-', but a name is an argument of `pulumi --stack` and of our own subprocesses,
# where `--output` would be an option: refused. `.` and `..` would be path segments.
STACK_NAME = r"(?!-)(?![.]{1,2}$)[A-Za-z0-9_.-]{1,100}"


def stack_name_problem(name: str) -> str | None:
    """Why `name` cannot be a stack name, or None."""
    if re.fullmatch(STACK_NAME, name):
        return None
    if name.startswith("-"):
        return f"{name!r} is not a stack name: it starts with '-', and would be read as a command-line option"
    return f"{name!r} is not a stack name (1 to 100 letters, digits, '-', '_', '.'; not starting with '-')"
