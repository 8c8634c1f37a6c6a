"""Before a SavedModel is published: its metrics read, its contract checked against the manifest, its warmup written."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from infra.platform.object_store import StoreError
from infra.spec.errors import NON_FINITE
from infra.spec.manifest import Contract, ModelManifest
from infra.spec.yamlio import read_bounded


def _no_constant(name: str) -> float:
    # Python's json accepts NaN, Infinity and -Infinity, which RFC 8259 section 6 excludes.
    raise ValueError(f"{name} is not a number")


def read_metrics(directory: Path) -> dict[str, float]:
    """`metrics.json` written by `modelctl train`, if the directory has one; numbers only, finite.

    Checked before anything is uploaded: the manifest refuses a non-finite metric, and a version
    whose metrics the manifest cannot record must not be published first."""
    path = directory / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(read_bounded(path, str(path)), parse_constant=_no_constant)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in metrics.items()
    ):
        raise StoreError(f"{path}: expected an object of metric names to numbers")
    for name, value in metrics.items():
        # 1e999 parses as inf: the literal is a number, its value is not finite.
        if not math.isfinite(float(value)):
            raise StoreError(f"{path}: {name}: Got {value!r}; {NON_FINITE}")
    return {k: float(v) for k, v in metrics.items()}


def prepare_savedmodel(manifest: ModelManifest, directory: Path) -> Contract:
    """Before anything is uploaded: the SavedModel has the manifest's signature, its contract is
    read, the example request satisfies it and runs through it, and TF-Serving's warmup file is
    written into it (so it is checksummed and published with the version).

    The warmup requests run while TF-Serving loads the version, before it is AVAILABLE
    (saved_model_bundle_source_adapter.cc calls RunSavedModelWarmup inside the load), so the
    readiness probe, which asks for the version's metadata, passes only once the version is
    warm; and a request that fails there fails the load, hence it is run here first.
    """
    from scripts.modelctl.contract import check_request
    from scripts.training.savedmodel import (
        SavedModelError,
        load_signature,
        predict,
        read_contract,
        warmup_requests,
        write_warmup,
    )

    signature_name = manifest.serving.signature
    signature = load_signature(directory, signature_name)  # refuses a model without the signature
    contract = read_contract(directory, signature_name)
    example = manifest.serving.example_request
    if example is None:
        print(
            f"warning: models/{manifest.name}.yaml has no serving.example_request: no warmup requests are "
            "written, so the first requests of a new pod pay TensorFlow's lazy initialisation",
            file=sys.stderr,
        )
        return contract
    problems = check_request(contract, signature_name, example)
    if problems:
        listed = "; ".join(f"{path or 'body'}: {problem}" for path, problem in problems)
        raise SavedModelError(
            f"models/{manifest.name}.yaml: serving.example_request does not fit the contract of {directory}: {listed}"
        )
    try:
        predict(signature, example, contract)
    except Exception as exc:  # TensorFlow raises many types; the graph's own checks among them
        raise SavedModelError(
            f"models/{manifest.name}.yaml: serving.example_request fails in {directory} "
            f"({' '.join(str(exc).split())[:300]}); TF-Serving would fail to load the version while warming up"
        ) from None
    write_warmup(directory, warmup_requests(manifest.name, signature_name, contract, [example]))
    return contract
