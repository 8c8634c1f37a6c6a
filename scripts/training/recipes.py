"""The training contract: what a model's entrypoint returns (a Recipe), and how modelctl finds,
imports and feeds it.

A manifest's `training.entrypoint` names a function `package.module:function` under the
repository root. modelctl calls it with one candidate's parameters (`seed` and the manifest's
`training.candidates.parameters`) and it returns a `Recipe`: the raw input features and their
kinds, the label, and the network's size. Everything around it is modelctl's: reading the
newest data, preprocessing inside the graph, the serving signature, warmup, metrics on the
frozen evaluation set, the model card, publishing (`train.py`, `scripts/modelctl/retrain.py`).

No TensorFlow here: `train.py` turns a recipe into a SavedModel whose signature takes the raw
features named below and returns human-readable outputs (see its docstring for the pattern).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from infra.spec.errors import ConfigError
from infra.spec.manifest import MODELS_DIR, ModelManifest, read_manifest
from infra.spec.paths import is_inside

DATA_DIR = Path(__file__).parent / "data"
# Hyperparameters modelctl applies over what the entrypoint returns (a candidate may set them
# without the entrypoint reading them); any other parameter is the entrypoint's to use.
TUNABLE = ("epochs", "learning_rate", "batch_size", "hidden_units")
# One split for every version, so versions are compared on the same held-out rows.
SPLIT_SEED = 7
TEST_FRACTION = 0.2


class RecipeError(Exception):
    """The entrypoint failed or returned no Recipe, or the data is unusable."""


class Kind(StrEnum):
    """How a raw feature arrives (its signature dtype) and how the graph prepares it."""

    number = "number"  # float32; normalised (Normalization adapted on the training rows)
    integer = "integer"  # int64 (a count, an hour); cast, then normalised like a number
    category = "category"  # string; one-hot over the vocabulary (StringLookup adapted on the training rows)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind


@dataclass(frozen=True)
class UnitInput:
    """An optional string input naming the unit of every `number` feature; the graph converts to
    the unit of the training data, so clients send what they measured.

    Optional means a default in the SignatureDef: TF-Serving feeds it when a request omits the
    input (servables/tensorflow/predict_util.cc, VerifyRequestInputsSize accepts fewer inputs
    when `signature.defaults()` is not empty), so clients of earlier versions keep working.
    """

    name: str
    factors: dict[str, float]  # unit -> factor to the training data's unit
    default: str
    since: int = 1  # the first version that takes it


@dataclass(frozen=True)
class Recipe:
    """What an entrypoint returns: the model's raw inputs, label, outputs and network size."""

    features: tuple[Feature, ...]
    label: str
    classes: tuple[str, ...] | None  # classification when set, else regression
    hidden_units: tuple[int, ...]
    epochs: int
    # The regression output's name: the label with its unit, e.g. `fare_usd`.
    output: str = ""
    unit: UnitInput | None = None
    learning_rate: float = 0.01
    batch_size: int = 32

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def epochs_for(self, version: int) -> int:
        """`modelctl train --version N`: later versions train longer, so successive versions are real
        candidates, not copies (a retrain sets `epochs` per candidate instead)."""
        return self.epochs * min(version, 6)

    def tuned(self, parameters: Mapping[str, Any]) -> Recipe:
        """This recipe with the candidate's values of the TUNABLE hyperparameters."""
        changes = {name: parameters[name] for name in TUNABLE if name in parameters}
        if "hidden_units" in changes:
            changes["hidden_units"] = tuple(changes["hidden_units"])
        return dataclasses.replace(self, **changes)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What evaluation reports (the promotion rule's metric must be one of them)."""
        return ("accuracy",) if self.is_classifier else ("mae", "rmse")

    def unit_for(self, version: int) -> UnitInput | None:
        return self.unit if self.unit is not None and version >= self.unit.since else None

    def parse(self, text: str, display: str) -> tuple[dict[str, list], list[float]]:
        """Raw feature columns (floats, ints or strings by kind) and labels (class index for classifiers)
        of a CSV with a header row; `display` names it in errors."""
        path = display
        rows = list(csv.DictReader(io.StringIO(text)))
        columns: dict[str, list] = {feature.name: [] for feature in self.features}
        labels = []
        for number, row in enumerate(rows, start=2):
            try:
                for feature in self.features:
                    raw = row[feature.name]
                    value = (
                        float(raw) if feature.kind is Kind.number else int(raw) if feature.kind is Kind.integer else raw
                    )
                    columns[feature.name].append(value)
                value = row[self.label]
                labels.append(float(self.classes.index(value)) if self.classes else float(value))
            except (KeyError, ValueError, TypeError) as exc:
                raise RecipeError(f"{path}: line {number}: {exc}") from None
        return columns, labels


def entrypoint_file(root: Path, manifest: ModelManifest) -> tuple[Path, str]:
    """The file and function `training.entrypoint` names, checked to lie under `root`."""
    display = f"{MODELS_DIR}/{manifest.name}.yaml"
    if manifest.training is None:
        raise ConfigError.single(display, "training", "no training section: this model cannot be trained here")
    module, function = manifest.training.entrypoint.split(":")
    base = root.joinpath(*module.split("."))
    candidates = [base.with_suffix(".py"), base / "__init__.py"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise ConfigError.single(
            display,
            "training.entrypoint",
            f"Got {manifest.training.entrypoint!r}; no file {candidates[0].relative_to(root).as_posix()} "
            "under the repository root",
        )
    if not is_inside(root, path):
        raise ConfigError.single(
            display, "training.entrypoint", f"{path.relative_to(root).as_posix()} resolves outside the repository"
        )
    return path, function


def load_entrypoint(root: Path, manifest: ModelManifest) -> Callable[[Mapping[str, Any]], Recipe]:
    """Import the entrypoint's module from its file under `root` (never from elsewhere on sys.path)."""
    path, function = entrypoint_file(root, manifest)
    display = f"{MODELS_DIR}/{manifest.name}.yaml"
    name = f"modelctl_entrypoint_{manifest.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses defined in it look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the model's own code: any error is its author's to read
        raise RecipeError(f"{display}: training.entrypoint: importing {path.name} failed: {exc!r}") from None
    entry = getattr(module, function, None)
    if not callable(entry):
        raise ConfigError.single(display, "training.entrypoint", f"{path.name} has no function {function!r}")
    return entry


def recipe_of(root: Path, manifest: ModelManifest, parameters: Mapping[str, Any]) -> Recipe:
    """Call the entrypoint with one candidate's parameters; the TUNABLE ones then override."""
    entry = load_entrypoint(root, manifest)
    recipe = entry(dict(parameters))
    if not isinstance(recipe, Recipe):
        raise RecipeError(
            f"{MODELS_DIR}/{manifest.name}.yaml: training.entrypoint returned {type(recipe).__name__}, not a Recipe "
            "(scripts/training/recipes.py)"
        )
    return recipe.tuned(parameters)


def recipe_for(model: str, root: Path | None = None, parameters: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe of `model` in the project at `root` (default: this repository)."""
    root = root or Path(__file__).resolve().parents[2]
    return recipe_of(root, read_manifest(root, model), parameters or {})
