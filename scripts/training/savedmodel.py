"""A SavedModel's serving signature: loading it, its contract, requests run through it in process,
and TF-Serving's warmup file (imports TensorFlow)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infra.spec.manifest import Contract

# TF-Serving replays this file while it loads a version, before the version is AVAILABLE
# (servables/tensorflow/saved_model_warmup_util.h: kRequestsFileName under assets.extra/;
# saved_model_bundle_source_adapter.cc runs RunSavedModelWarmup inside the servable's load;
# g3doc/saved_model_warmup.md). `--enable_model_warmup` defaults to true
# (model_servers/server.h), and at most 1000 records are read (WarmupConsts::kMaxNumRecords).
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_MAX_RECORDS = 1000
SERVING_TAG = "serve"


class SavedModelError(Exception):
    """Not a loadable SavedModel, it lacks the signature the manifest names, or a request does not fit it."""


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def load_signature(path: Path, signature_name: str) -> Any:
    """The concrete function of `signature_name`; refuses a directory that is not a SavedModel."""
    tf = _tensorflow()
    if not (path / "saved_model.pb").is_file():
        raise SavedModelError(f"{path}: not a SavedModel (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises many types for a corrupt model
        raise SavedModelError(f"{path}: cannot load the SavedModel: {' '.join(str(exc).split())[:300]}") from None
    signatures = dict(loaded.signatures)
    if signature_name not in signatures:
        available = ", ".join(sorted(signatures)) or "none"
        raise SavedModelError(
            f"{path}: no signature {signature_name!r} (the manifest's serving.signature); it has: {available}"
        )
    signature = signatures[signature_name]
    signature._loaded_model = loaded  # keep the variables alive as long as the function
    return signature


def read_contract(path: Path, signature_name: str) -> Contract:
    """The contract of `signature_name` as TF-Serving sees it: the SignatureDef of the `serve`
    MetaGraph in saved_model.pb (names, dtypes, shapes, and `defaults` of optional inputs),
    which is also what its metadata API reports (GetModelMetadata's signature_def)."""
    tf = _tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    document = saved_model_pb2.SavedModel()
    try:
        document.ParseFromString((path / "saved_model.pb").read_bytes())
    except (OSError, Exception) as exc:  # DecodeError has no common base with OSError
        raise SavedModelError(f"{path}: cannot read saved_model.pb: {exc}") from None
    graphs = [g for g in document.meta_graphs if SERVING_TAG in g.meta_info_def.tags]
    if not graphs:
        raise SavedModelError(f"{path}: no MetaGraph tagged {SERVING_TAG!r}; TF-Serving loads only that one")
    signatures = graphs[0].signature_def
    if signature_name not in signatures:
        available = ", ".join(sorted(signatures)) or "none"
        raise SavedModelError(f"{path}: no signature {signature_name!r}; it has: {available}")
    definition = signatures[signature_name]

    def tensor(info, default=None) -> dict[str, Any]:
        shape = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
        entry: dict[str, Any] = {"dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}
        if default is not None:
            entry["default"] = _plain(tf.make_ndarray(default).tolist())
        return entry

    return Contract.model_validate(
        {
            "inputs": {
                name: tensor(info, definition.defaults.get(name)) for name, info in sorted(definition.inputs.items())
            },
            "outputs": {name: tensor(info) for name, info in sorted(definition.outputs.items())},
        }
    )


def _plain(value: Any) -> Any:
    """numpy's tolist() gives bytes for strings; a manifest and JSON want text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def input_names(signature: Any) -> list[str]:
    _, keyword_specs = signature.structured_input_signature
    return sorted(keyword_specs)


def rest_request(signature_name: str, signature: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The body of `POST /v1/models/<name>:predict`, row format: one instance per row, keyed by
    the signature's input names (TF-Serving g3doc/api_rest.md)."""
    names = input_names(signature)
    instances = []
    for row in rows:
        missing = [n for n in names if n not in row]
        if missing:
            raise SavedModelError(f"example row lacks the signature inputs {', '.join(missing)}")
        instances.append({name: row[name] for name in names})
    return {"signature_name": signature_name, "instances": instances}


def request_columns(contract: Contract, request: Mapping[str, Any]) -> dict[str, Any]:
    """Input name -> batch (nested lists) of a REST predict body, row (`instances`) or columnar
    (`inputs`) form, as TF-Serving's JSON parser reads it (util/json_tensor.cc). Inputs the
    request omits are left out: TF-Serving feeds their SignatureDef defaults."""
    names = list(contract.inputs)
    if "instances" in request:
        instances = request["instances"]
        if len(names) == 1 and instances and not isinstance(instances[0], Mapping):
            return {names[0]: list(instances)}  # one named input: the instances are its values
        present = [n for n in names if n in instances[0]]
        return {name: [instance[name] for instance in instances] for name in present}
    inputs = request["inputs"]
    if not isinstance(inputs, Mapping):
        return {names[0]: inputs}
    return {name: inputs[name] for name in names if name in inputs}


def predict(signature: Any, request: Mapping[str, Any], contract: Contract | None = None) -> dict[str, list]:
    """Run a REST-style request through the signature in process, as TF-Serving would: omitted
    optional inputs get their default (broadcast like TF-Serving's feed of the default tensor)."""
    tf = _tensorflow()
    _, keyword_specs = signature.structured_input_signature
    if contract is None:
        contract = Contract.model_validate(
            {
                "inputs": {
                    n: {"dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape.as_list()]}
                    for n, s in keyword_specs.items()
                },
                "outputs": {"_": {"dtype": "float32", "shape": None}},
            }
        )
    columns = request_columns(contract, request)
    tensors = {}
    for name, spec in keyword_specs.items():
        if name in columns:
            tensors[name] = tf.constant(columns[name], dtype=spec.dtype)
        elif contract.inputs[name].default is not None:
            tensors[name] = tf.constant(contract.inputs[name].default, dtype=spec.dtype)
        else:
            raise SavedModelError(f"the request lacks input {name!r}, which has no default")
    outputs = signature(**tensors)
    return {name: _plain(tensor.numpy().tolist()) for name, tensor in outputs.items()}


def predict_request(model_name: str, signature_name: str, contract: Contract, request: Mapping[str, Any]) -> Any:
    """The gRPC `PredictRequest` equivalent of a REST predict body (tensorflow_serving/apis/predict.proto)."""
    tf = _tensorflow()
    from tensorflow_serving.apis import predict_pb2

    message = predict_pb2.PredictRequest()
    message.model_spec.name = model_name
    message.model_spec.signature_name = request.get("signature_name") or signature_name
    for name, values in request_columns(contract, request).items():
        message.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=contract.inputs[name].dtype.value))
    return message


def warmup_requests(
    model_name: str, signature_name: str, contract: Contract, examples: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """`PredictionLog`s of the example requests: each whole, and each of their instances alone
    (a batch of one is the shape most live requests have), at most WARMUP_MAX_RECORDS."""
    from tensorflow_serving.apis import prediction_log_pb2

    bodies: list[Mapping[str, Any]] = []
    for example in examples:
        bodies.append(example)
        instances = example.get("instances")
        if isinstance(instances, list) and len(instances) > 1:
            bodies += [{**example, "instances": [instance]} for instance in instances]
    logs = []
    for body in bodies[:WARMUP_MAX_RECORDS]:
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(predict_request(model_name, signature_name, contract, body))
        logs.append(log)
    return logs


def write_warmup(directory: Path, logs: Sequence[Any]) -> Path:
    """Write `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog) into the SavedModel."""
    tf = _tensorflow()
    target = directory / WARMUP_DIR / WARMUP_FILE
    target.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return target


def read_warmup(directory: Path) -> list[Any]:
    """The PredictionLogs of a SavedModel's warmup file, parsed as TF-Serving parses them."""
    tf = _tensorflow()
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(directory / WARMUP_DIR / WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
