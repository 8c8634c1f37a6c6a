"""The traffic a Canary's analysis drives itself (pure builders): `rollout` webhooks that ask
Flagger's load tester (infra/platform/loadtester.py) to send REST predictions to the canary and
to check gRPC Predict on it, with requests built from the model's example request and contract.

Flagger calls every `rollout` webhook at each analysis step before the metric checks; a webhook
answering above 202 halts the step and counts as a failed check (fluxcd/flagger@v1.44.0
pkg/controller/scheduler.go:L752-L762, pkg/controller/webhook.go:L90 `StatusCode > 202`).
The load tester runs `type: cmd` in the background and answers 202 at once (one copy of a
command runs at a time: pkg/loadtester/runner.go:L52-L70), and runs `type: bash` to the end,
answering 500 when it exits non-zero (pkg/loadtester/server.go:L308-L336). So REST traffic is a
background `hey` that lasts one interval, and the gRPC check is a blocking `ghz` whose report
must show no error.
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from typing import Any

from infra.model import tfserving
from infra.platform import loadtester
from infra.spec.manifest import LABEL_STABLE, Contract, DType, ServedModel
from infra.spec.settings import StackSettings

REST_TRAFFIC = "rest-traffic"
GRPC_CHECK = "grpc-predict"
# A gRPC call per check, a few at a time: enough to see a broken Predict, too few to load anything.
GRPC_CALLS = 20
# hey: requests per second per worker, and workers (`hey -q`, `-c`).
REST_QPS, REST_WORKERS = 5, 2
GRPC_WEBHOOK_TIMEOUT = "60s"  # Flagger's default is 10s (webhook.go:L63-L65); ghz needs to finish

# TensorProto's dtype and value field per contract dtype (tensorflow/core/framework/tensor.proto,
# types.proto), in protobuf's JSON mapping, which ghz reads (`-d`).
_TENSOR_FIELDS: dict[DType, tuple[str, str]] = {
    DType.float32: ("DT_FLOAT", "float_val"),
    DType.float64: ("DT_DOUBLE", "double_val"),
    DType.int8: ("DT_INT8", "int_val"),
    DType.uint8: ("DT_UINT8", "int_val"),
    DType.int16: ("DT_INT16", "int_val"),
    DType.uint16: ("DT_UINT16", "int_val"),
    DType.int32: ("DT_INT32", "int_val"),
    DType.uint32: ("DT_UINT32", "uint32_val"),
    DType.int64: ("DT_INT64", "int64_val"),
    DType.uint64: ("DT_UINT64", "uint64_val"),
    DType.bool: ("DT_BOOL", "bool_val"),
    DType.string: ("DT_STRING", "string_val"),
}


class RequestError(ValueError):
    """No load-test request can be built for a model (no example request, or no usable contract)."""


def canary_host(model: ServedModel, settings: StackSettings) -> str:
    """The canary Service Flagger generates (`<service.name>-canary`), by its namespaced DNS name."""
    return f"{model.name}-canary.{settings.namespace}"


def contract(model: ServedModel) -> Contract | None:
    """The contract of the version under analysis: the stable label's, which Flagger's target serves."""
    version = model.version_labels.get(LABEL_STABLE)
    published = model.manifest.versions.get(version) if version is not None else None
    return published.contract if published is not None else None


def rest_body(model: ServedModel) -> dict[str, Any]:
    """The predict body: the manifest's example request, else one row of zeros from the contract."""
    if model.serving.example_request is not None:
        return dict(model.serving.example_request)
    signature = contract(model)
    if signature is None:
        raise RequestError(f"model {model.name}: no serving.example_request and no contract to build a request from")
    zero = {DType.string: "", DType.bool: False}
    row = {name: zero.get(t.dtype, 0) for name, t in signature.inputs.items() if t.default is None}
    return {"instances": [row]}


def _columns(model: ServedModel, body: dict[str, Any], signature: Contract) -> dict[str, list[Any]]:
    """Input name -> batch of values (the REST row or columnar format, TF-Serving's api_rest.md)."""
    names = list(signature.inputs)
    if "instances" in body:
        rows = body["instances"]
        if all(isinstance(row, dict) for row in rows):
            return {name: [row[name] for row in rows] for name in names if name in rows[0]}
        if len(names) != 1:
            raise RequestError(f"model {model.name}: unnamed instances need a single-input contract, got {names}")
        return {names[0]: list(rows)}
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        return {name: list(value) if isinstance(value, list) else [value] for name, value in inputs.items()}
    if len(names) != 1:
        raise RequestError(f"model {model.name}: unnamed inputs need a single-input contract, got {names}")
    return {names[0]: list(inputs)}


def _shape_and_values(values: list[Any]) -> tuple[list[int], list[Any]]:
    shape = [len(values)]
    flat = values
    while flat and all(isinstance(v, list) for v in flat):
        shape.append(len(flat[0]))
        flat = [item for v in flat for item in v]
    return shape, flat


def _tensor(model: ServedModel, name: str, dtype: DType, values: list[Any]) -> dict[str, Any]:
    if dtype not in _TENSOR_FIELDS:
        raise RequestError(
            f"model {model.name}: input {name} has dtype {dtype.value}, which the gRPC check cannot send"
        )
    dt, field = _TENSOR_FIELDS[dtype]
    shape, flat = _shape_and_values(values)
    if dtype is DType.string:
        # `bytes` fields are base64 in protobuf's JSON mapping.
        flat = [base64.b64encode(str(v).encode()).decode("ascii") for v in flat]
    elif dtype in (DType.int64, DType.uint64):
        flat = [str(int(v)) for v in flat]  # 64-bit integers are strings in protobuf's JSON mapping
    elif dt in ("DT_FLOAT", "DT_DOUBLE"):
        flat = [float(v) for v in flat]
        if not all(math.isfinite(v) for v in flat):
            raise RequestError(f"model {model.name}: input {name} is not finite")
    return {"dtype": dt, "tensor_shape": {"dim": [{"size": str(size)} for size in shape]}, field: flat}


def grpc_request(model: ServedModel) -> dict[str, Any]:
    """A PredictRequest (tensorflow_serving/apis/predict.proto) in protobuf's JSON mapping: the
    REST request's values, typed by the contract's dtypes."""
    signature = contract(model)
    if signature is None:
        raise RequestError(f"model {model.name}: the served version has no contract to type a gRPC request")
    body = rest_body(model)
    try:
        inputs = {
            name: _tensor(model, name, signature.inputs[name].dtype, values)
            for name, values in _columns(model, body, signature).items()
            if name in signature.inputs
        }
    except (KeyError, TypeError, ValueError) as error:  # rows of different shapes, values of another type
        raise RequestError(f"model {model.name}: the example request does not fit the contract ({error})") from None
    missing = sorted(set(signature.required_inputs()) - set(inputs))
    if missing:
        raise RequestError(f"model {model.name}: the example request lacks required inputs {missing}")
    spec = {"name": model.name, "signature_name": body.get("signature_name") or model.serving.signature}
    return {"model_spec": spec, "inputs": inputs}


def hey_command(model: ServedModel, settings: StackSettings, interval: str) -> str:
    url = f"http://{canary_host(model, settings)}:{tfserving.REST_PORT}/v1/models/{model.name}:predict"
    body = json.dumps(rest_body(model), separators=(",", ":"), sort_keys=True)
    return f"hey -z {interval} -q {REST_QPS} -c {REST_WORKERS} -m POST -T application/json -d {shlex.quote(body)} {url}"


def ghz_command(model: ServedModel, settings: StackSettings) -> str:
    """ghz against the canary's gRPC port; `jq -e` fails the step unless every call succeeded
    (ghz's JSON report: `count`, `errorDistribution`, bojand/ghz runner/reporter.go Report).

    Predict, with the example typed by the served version's contract. A version published before
    contracts were recorded has none, and a request with guessed dtypes would fail a good release
    (TF-Serving checks each tensor's dtype against the signature), so such a model's check calls
    GetModelMetadata instead: the canary's gRPC server answers and the version is loaded, but a
    Predict broken only on gRPC is not seen until the version carries a contract."""
    try:
        call, request = loadtester.PREDICT_METHOD, grpc_request(model)
    except RequestError:
        call = loadtester.METADATA_METHOD
        request = {"model_spec": {"name": model.name}, "metadata_field": ["signature_def"]}
    data = json.dumps(request, separators=(",", ":"), sort_keys=True)
    target = f"{canary_host(model, settings)}:{tfserving.GRPC_PORT}"
    # pipefail: a ghz that cannot connect or call fails the step even though jq then reads nothing.
    return (
        f"set -o pipefail; ghz --insecure --protoset {loadtester.PROTOSET_PATH} --call {call} "
        f"-d {shlex.quote(data)} -n {GRPC_CALLS} -c 2 --connect-timeout 5s -t 10s -O json {target}"
        f" | jq -e '.count > 0 and (.errorDistribution | length) == 0'"
    )


def webhooks(model: ServedModel, settings: StackSettings, interval: str) -> list[dict[str, Any]]:
    """The Canary's `analysis.webhooks`: REST traffic for the metrics, and the gRPC gate. Every
    model's pods serve gRPC on 8500 and Flagger's canary Service exposes it (`portDiscovery`), so
    every Canary gets the gRPC check, whether or not the stack also routes gRPC from outside.
    Without an example request or a contract no REST traffic can be built: the webhook is left
    out and the plan's `canary-drives-traffic` rule refuses the Canary, naming why."""
    url = loadtester.url(settings.namespace)
    hooks = []
    try:
        rest = hey_command(model, settings, interval)
    except RequestError:
        rest = None
    if rest is not None:
        hooks.append({"name": REST_TRAFFIC, "type": "rollout", "url": url, "metadata": {"type": "cmd", "cmd": rest}})
    hooks.append(
        {
            "name": GRPC_CHECK,
            "type": "rollout",
            "url": url,
            "timeout": GRPC_WEBHOOK_TIMEOUT,
            "metadata": {"type": "bash", "cmd": ghz_command(model, settings)},
        }
    )
    return hooks
