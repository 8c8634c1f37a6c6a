"""Reading a SavedModel's serving signature, and the TF-Serving REST request built from it (imports TensorFlow)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class SavedModelError(Exception):
    """Not a loadable SavedModel, or it lacks the signature the manifest names."""


def load_signature(path: Path, signature_name: str) -> Any:
    """The concrete function of `signature_name`; refuses a directory that is not a SavedModel."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

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


def input_names(signature: Any) -> list[str]:
    _, keyword_specs = signature.structured_input_signature
    return sorted(keyword_specs)


def rest_request(signature_name: str, signature: Any, rows: Sequence[Mapping[str, float]]) -> dict[str, Any]:
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


def predict(signature: Any, request: Mapping[str, Any]) -> dict[str, list]:
    """Run a REST-style request through the signature in process, as TF-Serving would."""
    import tensorflow as tf

    _, keyword_specs = signature.structured_input_signature
    columns = {
        name: tf.constant([instance[name] for instance in request["instances"]], dtype=spec.dtype)
        for name, spec in keyword_specs.items()
    }
    outputs = signature(**columns)
    return {name: tensor.numpy().tolist() for name, tensor in outputs.items()}
