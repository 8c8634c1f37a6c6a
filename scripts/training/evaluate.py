"""One evaluation for every SavedModel on the frozen evaluation set: candidates and the champion
alike run the set through their serving signature, as TF-Serving would (imports TensorFlow)."""

from __future__ import annotations

import math
from pathlib import Path

from scripts.training.data_source import DataFile
from scripts.training.recipes import Recipe
from scripts.training.savedmodel import load_signature, predict, read_contract


def evaluate_savedmodel(path: Path, signature_name: str, recipe: Recipe, evaluation: DataFile) -> dict[str, float]:
    """The recipe's metrics (accuracy; or mae and rmse) of the SavedModel at `path` on the set.

    Only the signature's outputs are read (the label's class names, or the regression output),
    so a champion exported by older code is measured exactly like a fresh candidate. A value
    that is not finite stays NaN: the caller excludes it.
    """
    columns, labels = recipe.parse(evaluation.text, evaluation.uri)
    contract = read_contract(path, signature_name)
    signature = load_signature(path, signature_name)
    inputs = {name: values for name, values in columns.items() if name in contract.inputs}
    outputs = predict(signature, {"inputs": inputs}, contract)
    if recipe.is_classifier:
        predicted = [v.decode() if isinstance(v, bytes) else v for v in outputs[recipe.label]]
        truth = [recipe.classes[int(label)] for label in labels]
        return {"accuracy": round(sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth), 4)}
    predicted = [float(v) for v in outputs[recipe.output or recipe.label]]
    errors = [p - t for p, t in zip(predicted, labels, strict=True)]
    mae = sum(abs(e) for e in errors) / len(errors)
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    return {"mae": _rounded(mae), "rmse": _rounded(rmse)}


def _rounded(value: float) -> float:
    return round(value, 4) if math.isfinite(value) else math.nan
