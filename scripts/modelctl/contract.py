"""A version's contract: its OpenAPI document, requests checked against it, and what a version bump
does to the clients (the comparison the plan shows and the rule `contract-compatibility`).

Pure functions over the manifests' recorded contracts (`versions.<n>.contract`, written by
`modelctl publish` from the SavedModel's SignatureDef): no TensorFlow, no Pulumi. It lives in
`scripts/` because only modelctl needs it; the Pulumi program declares the same objects
whatever the contract says.

Why the compatibility rule is not in the Pulumi policy pack: a policy sees the resources of
the new state only (a resource policy gets one resource's new inputs, a stack policy the new
stack), and no version's contract is a resource property. Comparing the version a stack served
before with the one it will serve needs the base revision's manifests, which only the offline
plan has (`modelctl plan --base REF`). The rule therefore runs in every such plan, is printed
like the pack's rules and exits 1 the same way.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.spec.errors import ConfigError, ErrorItem
from infra.spec.manifest import (
    LABEL_CANARY,
    LABEL_STABLE,
    MANIFEST_SUFFIXES,
    MODELS_DIR,
    Contract,
    DType,
    ModelManifest,
    TensorContract,
    parse_manifest,
)
from scripts.modelctl import sinks

RULE = "contract-compatibility"
RULE_DESCRIPTION = (
    "A production stack serves a version whose contract breaks the clients of the version it replaces "
    "only when the manifest acknowledges it."
)
OPENAPI_VERSION = "3.1.0"
API_REST_DOC = "https://github.com/tensorflow/serving/blob/master/tensorflow_serving/g3doc/api_rest.md"
# TF-Serving's JSON mapping (g3doc/api_rest.md, "JSON mapping"): integers are JSON numbers
# (bounded by their type), floats are numbers, DT_STRING is a string or {"b64": ...} for bytes.
_INTEGER_BOUNDS = {
    DType.int8: (-(2**7), 2**7 - 1),
    DType.uint8: (0, 2**8 - 1),
    DType.int16: (-(2**15), 2**15 - 1),
    DType.uint16: (0, 2**16 - 1),
    DType.int32: (-(2**31), 2**31 - 1),
    DType.uint32: (0, 2**32 - 1),
    DType.int64: (-(2**63), 2**63 - 1),
    DType.uint64: (0, 2**64 - 1),
}
_B64 = {
    "type": "object",
    "description": "Binary value, base64-encoded (api_rest.md, 'Encoding binary values').",
    "properties": {"b64": {"type": "string", "contentEncoding": "base64"}},
    "required": ["b64"],
    "additionalProperties": False,
}


# JSON Schemas of requests and responses ---------------------------------------------------------


def _scalar(tensor: TensorContract, name: str, output: bool) -> dict[str, Any]:
    dtype = tensor.dtype
    if dtype is DType.bool:
        return {"type": "boolean"}
    if dtype is DType.string:
        # Outputs whose name ends in `_bytes` come back base64-encoded; inputs may be either.
        if output:
            return dict(_B64) if name.endswith("_bytes") else {"type": "string"}
        return {"anyOf": [{"type": "string"}, dict(_B64)]}
    if dtype in _INTEGER_BOUNDS:
        low, high = _INTEGER_BOUNDS[dtype]
        return {"type": "integer", "minimum": low, "maximum": high}
    return {"type": "number"}


def tensor_schema(tensor: TensorContract, name: str, row: bool, output: bool = False) -> dict[str, Any]:
    """A tensor's JSON value: in the row form one batch element (the shape without its first
    dimension), in the columnar form the whole batch, nested as api_rest.md describes."""
    if tensor.shape is None:
        return {"description": f"{tensor.dtype.value} tensor of unknown rank"}
    schema = _scalar(tensor, name, output)
    dimensions = tensor.shape[1:] if row else tensor.shape
    for size in reversed(dimensions):
        schema = {"type": "array", "items": schema}
        if size >= 0:
            schema |= {"minItems": size, "maxItems": size}
    described = f"{tensor.dtype.value}, shape {tensor.shape}"
    if tensor.default is not None:
        described += f"; optional, default {tensor.default!r}"
    return schema | {"description": described}


def _named(tensors: Mapping[str, TensorContract], row: bool, output: bool) -> dict[str, Any]:
    required = list(tensors) if output else [n for n, t in tensors.items() if t.default is None]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: tensor_schema(t, name, row, output) for name, t in tensors.items()},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _inputs(contract: Contract, row: bool) -> dict[str, Any]:
    named = _named(contract.inputs, row, output=False)
    if len(contract.inputs) == 1:
        # One named input: its value may stand alone (api_rest.md, row and columnar formats).
        ((name, tensor),) = contract.inputs.items()
        return {"anyOf": [tensor_schema(tensor, name, row), named]}
    return named


def _outputs(contract: Contract, row: bool) -> dict[str, Any]:
    if len(contract.outputs) == 1:
        # "If the output of the model contains only one named tensor, we omit the name" (api_rest.md).
        ((name, tensor),) = contract.outputs.items()
        return tensor_schema(tensor, name, row, output=True)
    return _named(contract.outputs, row, output=True)


def request_schemas(contract: Contract, signature: str) -> dict[str, dict[str, Any]]:
    """Row (`instances`) and columnar (`inputs`) predict bodies; a request has one or the other."""
    signature_name = {"type": "string", "enum": [signature], "description": "The serving signature."}
    return {
        "RowPredictRequest": {
            "type": "object",
            "required": ["instances"],
            "additionalProperties": False,
            "properties": {
                "signature_name": signature_name,
                "instances": {"type": "array", "minItems": 1, "items": _inputs(contract, row=True)},
            },
        },
        "ColumnarPredictRequest": {
            "type": "object",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {"signature_name": signature_name, "inputs": _inputs(contract, row=False)},
        },
    }


def response_schemas(contract: Contract) -> dict[str, dict[str, Any]]:
    return {
        "RowPredictResponse": {
            "type": "object",
            "required": ["predictions"],
            "properties": {"predictions": {"type": "array", "items": _outputs(contract, row=True)}},
        },
        "ColumnarPredictResponse": {
            "type": "object",
            "required": ["outputs"],
            "properties": {"outputs": _outputs(contract, row=False)},
        },
    }


_STATUS = {
    "type": "object",
    "description": "GetModelStatusResponse (tensorflow_serving/apis/get_model_status.proto) as JSON.",
    "required": ["model_version_status"],
    "properties": {
        "model_version_status": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    # int64 fields are strings in protobuf's JSON mapping.
                    "version": {"type": "string", "pattern": "^[0-9]+$"},
                    "state": {"enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                    "status": {
                        "type": "object",
                        "properties": {"error_code": {"type": "string"}, "error_message": {"type": "string"}},
                    },
                },
            },
        }
    },
}
_METADATA = {
    "type": "object",
    "description": "GetModelMetadataResponse (tensorflow_serving/apis/get_model_metadata.proto) as JSON: the "
    "version's SignatureDefs under metadata.signature_def.",
    "required": ["model_spec", "metadata"],
    "properties": {
        "model_spec": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "signature_name": {"type": "string"},
            },
        },
        "metadata": {"type": "object", "properties": {"signature_def": {"type": "object"}}},
    },
}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def openapi_document(manifest: ModelManifest, version: int, servers: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """OpenAPI 3.1 document of TF-Serving's REST API for one version of a model (g3doc/api_rest.md):
    predict by version and by label, status and metadata. `servers`: (url, description)."""
    contract = manifest.versions[version].contract
    if contract is None:
        raise ConfigError.single(
            f"{MODELS_DIR}/{manifest.name}.yaml",
            f"versions.{version}.contract",
            "not recorded; `modelctl publish` records it, or copy it from `modelctl contract` of the SavedModel",
        )
    base = f"/v1/models/{manifest.name}"
    ref = "#/components/schemas/"
    label = {
        "name": "label",
        "in": "path",
        "required": True,
        "description": "TF-Serving version label. This document describes the request of version "
        f"{version}; it holds for a label while the label serves a version with the same contract.",
        "schema": {"enum": [LABEL_STABLE, LABEL_CANARY]},
    }
    errors = {
        "400": {"description": "Bad request", "content": {"application/json": {"schema": {"$ref": ref + "Error"}}}},
        "404": {
            "description": "No such model, version or label",
            "content": {"application/json": {"schema": {"$ref": ref + "Error"}}},
        },
    }

    def predict(operation: str, summary: str, parameters: list) -> dict[str, Any]:
        return {
            "post": {
                "operationId": operation,
                "summary": summary,
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": ref + "PredictRequest"}}},
                },
                "responses": {
                    "200": {
                        "description": "Predictions: `predictions` for a row request, `outputs` for a columnar one.",
                        "content": {"application/json": {"schema": {"$ref": ref + "PredictResponse"}}},
                    },
                    **errors,
                },
            }
        }

    def get(operation: str, summary: str, schema: str, parameters: list) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation,
                "summary": summary,
                "parameters": parameters,
                "responses": {
                    "200": {
                        "description": summary,
                        "content": {"application/json": {"schema": {"$ref": ref + schema}}},
                    },
                    **errors,
                },
            }
        }

    signature = manifest.serving.signature
    schemas = request_schemas(contract, signature) | response_schemas(contract)
    schemas["PredictRequest"] = {
        "oneOf": [{"$ref": ref + "RowPredictRequest"}, {"$ref": ref + "ColumnarPredictRequest"}]
    }
    schemas["PredictResponse"] = {
        "oneOf": [{"$ref": ref + "RowPredictResponse"}, {"$ref": ref + "ColumnarPredictResponse"}]
    }
    schemas |= {"ModelStatus": _STATUS, "ModelMetadata": _METADATA, "Error": _ERROR}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{manifest.name}: TensorFlow Serving REST API",
            "version": str(version),
            "summary": manifest.description,
            # OpenAPI 3.1 `description` fields are CommonMark: the signature is manifest text.
            "description": f"Version {version} of model {sinks.md_code(manifest.name)}, signature "
            f"{sinks.md_code(signature)}. Requests and responses follow TF-Serving's REST API ({API_REST_DOC}); "
            "the schemas come from the version's "
            "recorded contract (its SignatureDef).",
            "contact": {"email": manifest.owner},
        },
        "paths": {
            f"{base}/versions/{version}:predict": predict("predictVersion", f"Predict with version {version}", []),
            f"{base}/labels/{{label}}:predict": predict(
                "predictLabel", "Predict with the version a label serves", [label]
            ),
            f"{base}/versions/{version}": get("statusVersion", f"Status of version {version}", "ModelStatus", []),
            f"{base}/labels/{{label}}": get(
                "statusLabel", "Status of the version a label serves", "ModelStatus", [label]
            ),
            f"{base}/versions/{version}/metadata": get(
                "metadataVersion", f"Metadata (signatures) of version {version}", "ModelMetadata", []
            ),
            f"{base}/labels/{{label}}/metadata": get(
                "metadataLabel", "Metadata of the version a label serves", "ModelMetadata", [label]
            ),
        },
        "components": {"schemas": schemas},
        "x-tf-serving": {"model": manifest.name, "version": version, "signature": signature},
    }
    servers = [{"url": url, "description": description} for url, description in servers]
    if servers:
        document["servers"] = servers
    return document


def check_request(contract: Contract, signature: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, problem) for every way `body` does not satisfy the contract's request schema."""
    import jsonschema

    if "instances" in body and "inputs" in body:
        return [("", "has both `instances` and `inputs`; TF-Serving takes one form or the other")]
    form = "RowPredictRequest" if "instances" in body else "ColumnarPredictRequest"
    validator = jsonschema.Draft202012Validator(request_schemas(contract, signature)[form])
    problems = [
        (_path(error.absolute_path), error.message)
        for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    ]
    instances = body.get("instances")
    if not problems and isinstance(instances, list) and instances and isinstance(instances[0], Mapping):
        first = set(instances[0])
        for index, instance in enumerate(instances):
            if set(instance) != first:
                # util/json_tensor.cc: every instance names the same inputs (one tensor per input).
                problems.append((f"instances[{index}]", "names other inputs than instances[0]; all must name the same"))
    return problems


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def example_request_errors(manifest: ModelManifest) -> list[ErrorItem]:
    """The manifest's `serving.example_request` against the contract of every version an
    environment serves (smoke and warmup send it to each), one error per problem."""
    body = manifest.serving.example_request
    if body is None:
        return []
    served = sorted({v for env in manifest.environments.values() for v in env.labels().values()})
    found: dict[tuple[str, str], list[int]] = {}
    for version in served:
        contract = manifest.versions[version].contract
        if contract is not None:
            for problem in check_request(contract, manifest.serving.signature, body):
                found.setdefault(problem, []).append(version)
    errors = []
    for (path, problem), versions in found.items():
        field = "serving.example_request" + (f".{path}" if path and not path.startswith("[") else path)
        which = ", ".join(str(v) for v in versions)
        errors.append(
            ErrorItem(
                f"{MODELS_DIR}/{manifest.name}.yaml",
                field,
                f"{problem} (the contract of served version{'s' if len(versions) > 1 else ''} {which})",
            )
        )
    return errors


# Comparing two contracts ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractChange:
    """One difference between the contract a stack served and the one it will serve."""

    kind: str  # input-added, input-removed, input-renamed, input-changed, output-added, ...
    name: str
    breaking: bool
    # Trusted wording with a `{}` where each of `values` goes (names quoted `{}`): values come from
    # manifests (names, defaults), so each sink quotes them its own way (`markdown`), never by
    # parsing `detail`, which a backtick in a name would confuse.
    template: str
    values: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        return self.template.format(*self.values)

    def markdown(self) -> str:
        """The detail for a table cell: the wording as text, each value as a code span."""
        pieces = self.template.replace("`{}`", "{}").split("{}")
        cell = sinks.md_cell(pieces[0])
        for value, piece in zip(self.values, pieces[1:], strict=True):
            cell += sinks.md_code(_clip(value), in_table=True) + sinks.md_cell(piece)
        return cell

    def __str__(self) -> str:
        return self.detail

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "breaking": self.breaking, "detail": self.detail}


def _shape(tensor: TensorContract) -> str:
    return "unknown rank" if tensor.shape is None else str(tensor.shape)


def _tensor_changes(where: str, name: str, old: TensorContract, new: TensorContract) -> list[ContractChange]:
    changes = []
    if old.dtype != new.dtype:
        changes.append(
            ContractChange(
                f"{where}-changed", name, True, f"{where} `{{}}`: dtype {old.dtype.value} → {new.dtype.value}", (name,)
            )
        )
    if old.shape != new.shape:
        changes.append(
            ContractChange(
                f"{where}-changed", name, True, f"{where} `{{}}`: shape {_shape(old)} → {_shape(new)}", (name,)
            )
        )
    if where == "input" and old.default != new.default:
        if new.default is None:
            changes.append(
                ContractChange(
                    "input-changed",
                    name,
                    True,
                    "input `{}`: no default any more (was {}): required",
                    (name, repr(old.default)),
                )
            )
        elif old.default is None:
            changes.append(
                ContractChange(
                    "input-changed", name, False, "input `{}`: optional now (default {})", (name, repr(new.default))
                )
            )
        else:
            changes.append(
                ContractChange(
                    "input-changed",
                    name,
                    False,
                    "input `{}`: default {} → {} (clients that omit it get other results)",
                    (name, repr(old.default), repr(new.default)),
                )
            )
    return changes


def compare(old: Contract, new: Contract) -> list[ContractChange]:
    """What moving clients from `old` to `new` does to them, breaking first.

    Compatible: an added input with a default (TF-Serving feeds the default when a request omits
    it: predict_util.cc VerifyRequestInputsSize accepts fewer inputs when the SignatureDef has
    defaults), an added output, an input that gains a default. Breaking: a removed input (a
    request still sending it is refused, "Sent extra"), an added input without a default
    ("Missing but required"), a renamed one (both), a changed dtype or shape, a removed output,
    and any change of the number of inputs or outputs from or to one, which changes the REST
    body itself (api_rest.md: one named input may be sent bare, one output is returned without
    its name).
    """
    changes: list[ContractChange] = []
    removed = [n for n in old.inputs if n not in new.inputs]
    added = [n for n in new.inputs if n not in old.inputs]
    renamed: dict[str, str] = {}
    for name in removed:
        twin = next(
            (
                a
                for a in added
                if a not in renamed.values()
                and new.inputs[a].default is None
                and (new.inputs[a].dtype, new.inputs[a].shape) == (old.inputs[name].dtype, old.inputs[name].shape)
            ),
            None,
        )
        if twin is not None:
            renamed[name] = twin
    for name in removed:
        if name in renamed:
            changes.append(
                ContractChange(
                    "input-renamed",
                    name,
                    True,
                    "input `{}` renamed to `{}` (same dtype and shape)",
                    (name, renamed[name]),
                )
            )
        else:
            changes.append(ContractChange("input-removed", name, True, "input `{}` removed", (name,)))
    for name in added:
        if name in renamed.values():
            continue
        tensor = new.inputs[name]
        if tensor.default is None:
            changes.append(
                ContractChange(
                    "input-added", name, True, "input `{}` added without a default: clients must send it", (name,)
                )
            )
        else:
            changes.append(
                ContractChange(
                    "input-added", name, False, "input `{}` added, optional (default {})", (name, repr(tensor.default))
                )
            )
    for name in old.inputs:
        if name in new.inputs:
            changes += _tensor_changes("input", name, old.inputs[name], new.inputs[name])
    if (len(old.inputs) == 1) != (len(new.inputs) == 1):
        changes.append(
            ContractChange(
                "inputs-form",
                "",
                True,
                f"{len(old.inputs)} → {len(new.inputs)} inputs: a single input may be sent bare in REST "
                "requests, several only by name",
            )
        )
    for name in old.outputs:
        if name not in new.outputs:
            changes.append(ContractChange("output-removed", name, True, "output `{}` removed", (name,)))
        else:
            changes += _tensor_changes("output", name, old.outputs[name], new.outputs[name])
    for name in new.outputs:
        if name not in old.outputs:
            changes.append(ContractChange("output-added", name, False, "output `{}` added", (name,)))
    if (len(old.outputs) == 1) != (len(new.outputs) == 1):
        changes.append(
            ContractChange(
                "outputs-form",
                "",
                True,
                f"{len(old.outputs)} → {len(new.outputs)} outputs: REST responses name outputs only when there "
                "are several, so their shape changes",
            )
        )
    return sorted(changes, key=lambda c: not c.breaking)


# Reviewing a change ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractReview:
    """A served version that moves in one stack: the contract before and after, and the verdict."""

    stack: str
    environment: str
    production: bool
    model: str
    label: str
    base_version: int
    head_version: int
    changes: tuple[ContractChange, ...] = ()
    not_compared: str | None = None  # why the contracts could not be compared
    acknowledged: str | None = None  # the head version's breaking_change_acknowledged
    signature: str = ""

    @property
    def breaking(self) -> bool:
        return any(change.breaking for change in self.changes)

    @property
    def refused(self) -> bool:
        return self.production and self.breaking and self.acknowledged is None

    @property
    def verdict(self) -> str:
        if self.not_compared:
            return "not compared"
        if self.breaking:
            return "breaking (acknowledged)" if self.acknowledged else "breaking"
        return "compatible" if self.changes else "unchanged"

    def summary(self) -> str:
        head = f"{self.model} {self.label} {self.base_version} → {self.head_version}: {self.verdict}"
        if self.not_compared:
            return f"{head} ({self.not_compared})"
        details = "; ".join(str(change) for change in self.changes)
        if self.acknowledged and self.breaking:
            details += f"; acknowledged: {self.acknowledged}"
        return f"{head}: {details}" if details else head

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "model": self.model,
            "environment": self.environment,
            "label": self.label,
            "baseVersion": self.base_version,
            "headVersion": self.head_version,
            "verdict": self.verdict,
            "changes": [change.as_json() for change in self.changes],
        }
        if self.not_compared:
            document["notCompared"] = self.not_compared
        if self.acknowledged:
            document["acknowledged"] = self.acknowledged
        return document

    def violation(self) -> str:
        """The rule's message, printed like the policy pack's violations."""
        file = f"{MODELS_DIR}/{self.model}.yaml"
        breaking = "; ".join(str(c) for c in self.changes if c.breaking)
        return (
            f"[mandatory] {RULE}: model {self.model}: {self.label} {self.base_version} → {self.head_version} "
            f"breaks its clients in production: {breaking} (fix: keep the old inputs and outputs and add new "
            f"inputs with defaults, or, once clients have moved, acknowledge it in {file}: "
            f'versions.{self.head_version}.breaking_change_acknowledged: "<why and who was told>")'
        )


def _contract(version: int, *manifests: ModelManifest | None) -> Contract | None:
    """A version's recorded contract; the head's record first (a change may record contracts of
    versions published before contracts were recorded; versions are immutable otherwise)."""
    for manifest in manifests:
        if manifest is not None and version in manifest.versions and manifest.versions[version].contract:
            return manifest.versions[version].contract
    return None


def review(
    base: Mapping[str, ModelManifest | None],
    head: Iterable[ModelManifest],
    stacks: Mapping[str, tuple[str, bool]],
) -> dict[str, list[ContractReview]]:
    """Per stack (`stacks`: name -> (environment, production)), every version the head serves
    under a label that the base did not serve, compared with the base's stable version: what
    the clients of that environment called before. A model the base does not serve in the
    environment is new there: nothing to compare. `base[model]` None: unreadable base manifest."""
    reviews: dict[str, list[ContractReview]] = {}
    for stack, (environment, production) in stacks.items():
        found = reviews.setdefault(stack, [])
        for manifest in head:
            served = manifest.environments.get(environment)
            if served is None or manifest.name not in base:
                continue
            before = base[manifest.name]
            if before is None:
                continue
            was = before.environments.get(environment)
            if was is None:
                continue
            old_versions = set(was.labels().values())
            for label, version in served.labels().items():
                if version in old_versions:
                    continue
                common = {
                    "stack": stack,
                    "environment": environment,
                    "production": production,
                    "model": manifest.name,
                    "label": label,
                    "base_version": was.stable,
                    "head_version": version,
                    "acknowledged": manifest.versions[version].breaking_change_acknowledged,
                    "signature": manifest.serving.signature,
                }
                old, new = _contract(was.stable, manifest, before), _contract(version, manifest)
                missing = [str(v) for v, c in ((was.stable, old), (version, new)) if c is None]
                if missing:
                    found.append(
                        ContractReview(**common, not_compared=f"no contract recorded for version {', '.join(missing)}")
                    )
                    continue
                assert old is not None and new is not None
                changes = compare(old, new)
                if before.serving.signature != manifest.serving.signature:
                    changes.insert(
                        0,
                        ContractChange(
                            "signature-renamed",
                            before.serving.signature,
                            True,
                            "serving signature `{}` → `{}`",
                            (before.serving.signature, manifest.serving.signature),
                        ),
                    )
                found.append(ContractReview(**common, changes=tuple(changes)))
    return reviews


def manifests_at(root: Path, ref: str) -> dict[str, ModelManifest | None]:
    """The manifests revision `ref` (git) has and the working tree changed, by model; None for one
    that does not parse with this schema (its contracts are then not compared). A manifest equal
    in both moves no version, so it is left out: a one-model change in a fleet reads one blob.

    The blobs are read with one `git cat-file --batch` and parsed within the bounds every
    manifest is read with (infra/spec/yamlio.py), whatever the base holds."""
    from infra.spec.yamlio import parse_yaml, read_bounded
    from scripts.modelctl.snapshot import git, resolve_commit

    commit = resolve_commit(root, ref)
    listing = git(root, "ls-tree", commit, f"{MODELS_DIR}/") or ""
    changed: dict[str, tuple[str, str]] = {}  # name -> (blob, path)
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) != 3 or parts[1] != "blob" or Path(path).suffix not in MANIFEST_SUFFIXES:
            continue
        blob, name = parts[2], Path(path).stem
        try:
            current = read_bounded(root / path, path)
        except ConfigError:
            current = None
        # git's blob id of the working-tree file: sha1("blob <size>\0" + content).
        if current is not None and hashlib.sha1(b"blob %d\0" % len(current) + current).hexdigest() == blob:
            continue
        changed[name] = (blob, path)
    if not changed:
        return {}
    batch = subprocess.run(
        ["git", "-C", str(root), "cat-file", "--batch"],
        input="".join(f"{blob}\n" for blob, _ in changed.values()).encode(),
        capture_output=True,
    )
    contents, view, offset = {}, memoryview(batch.stdout), 0
    for name in changed:
        end = batch.stdout.index(b"\n", offset)
        header = bytes(view[offset:end]).split()
        if len(header) != 3 or header[1] != b"blob":
            raise ConfigError([ErrorItem(f"{ref}:{changed[name][1]}", "", "cannot be read from git")])
        size = int(header[2])
        contents[name] = bytes(view[end + 1 : end + 1 + size])
        offset = end + 1 + size + 1
    manifests: dict[str, ModelManifest | None] = {}
    for name, data in contents.items():
        display = f"{ref}:{changed[name][1]}"
        try:
            manifests[name] = parse_manifest(parse_yaml(data.decode("utf-8"), display), display, name)
        except (ConfigError, UnicodeDecodeError):
            manifests[name] = None
    return manifests


def stack_reviews(root: Path, stacks: Iterable[str], base_ref: str | None) -> dict[str, list[ContractReview]]:
    """The reviews of `modelctl plan --base REF` for `stacks` (none without a base)."""
    from infra.spec.manifest import load_manifests
    from infra.spec.settings import load_stack_settings

    names = list(stacks)
    if not base_ref:
        return {stack: [] for stack in names}
    settings = {stack: load_stack_settings(root, stack) for stack in names}
    return review(
        manifests_at(root, base_ref),
        load_manifests(root),
        {stack: (s.environment, s.production) for stack, s in settings.items()},
    )


# Rendering (the plan's reports call these) -------------------------------------------------------


def text_lines(reviews: Iterable[ContractReview]) -> list[str]:
    return [sinks.terminal(f"  contract {r.summary()}") for r in reviews]


# A manifest value shown in a review cell: enough to recognise it, never a comment's worth.
CELL_VALUE_LIMIT = 500


def _clip(text: str, limit: int = CELL_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def markdown_table(reviews: list[ContractReview]) -> tuple[list[str], list[str]]:
    """The review as a GFM table: (the lines before its rows, one line per row); nothing without
    reviews. Every manifest value goes through `sinks` (names and defaults as code spans, the
    acknowledgement as text, clipped), so no value can end a cell, a row or the table."""
    if not reviews:
        return [], []
    head = [
        "Contract changes (the version each label serves, against the stable version clients called before):",
        "",
        "| model | label | versions | verdict | changes |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = []
    for r in reviews:
        verdict = f"**{r.verdict}**" if r.breaking else r.verdict
        details = "<br>".join(("⚠️ " if c.breaking else "") + c.markdown() for c in r.changes) or sinks.md_cell(
            r.not_compared or "–"
        )
        if r.acknowledged and r.breaking:
            details += f"<br>acknowledged: {sinks.md_cell(_clip(r.acknowledged))}"
        rows.append(
            f"| {sinks.md_code(r.model, in_table=True)} | {sinks.md_cell(r.label)} | {r.base_version} → "
            f"{r.head_version} | {verdict} | {details} |"
        )
    return head, rows
