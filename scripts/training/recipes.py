"""How each example model is trained: its data file, raw input features, label, outputs and network.

No TensorFlow here: `train.py` turns a recipe into a SavedModel whose signature takes the raw
features named below and returns human-readable outputs (see its docstring for the pattern).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
# One split for every version, so versions are compared on the same held-out rows.
SPLIT_SEED = 7
TEST_FRACTION = 0.2


class RecipeError(Exception):
    """No recipe for a model, or its data file is unusable."""


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
    model: str
    data_file: str
    features: tuple[Feature, ...]
    label: str
    classes: tuple[str, ...] | None  # classification when set, else regression
    hidden_units: tuple[int, ...]
    base_epochs: int
    # The regression output's name: the label with its unit, e.g. `fare_usd`.
    output: str = ""
    unit: UnitInput | None = None
    learning_rate: float = 0.01
    batch_size: int = 32

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def epochs(self, version: int) -> int:
        """Later versions train longer: successive versions are real candidates, not copies."""
        return self.base_epochs * min(version, 6)

    def unit_for(self, version: int) -> UnitInput | None:
        return self.unit if self.unit is not None and version >= self.unit.since else None

    def load(self) -> tuple[dict[str, list], list[float]]:
        """Raw feature columns (floats, ints or strings by kind) and labels (class index for classifiers)."""
        path = DATA_DIR / self.data_file
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read: {exc.strerror}") from None
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
            except (KeyError, ValueError) as exc:
                raise RecipeError(f"{path}: line {number}: {exc}") from None
        return columns, labels


RECIPES = {
    recipe.model: recipe
    for recipe in (
        Recipe(
            model="iris",
            data_file="iris.csv",
            features=tuple(
                Feature(name, Kind.number) for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
            ),
            label="species",
            classes=("setosa", "versicolor", "virginica"),
            hidden_units=(16,),
            base_epochs=40,
            # Fisher's measurements are in centimetres; from version 4 a client may send
            # millimetres or inches and say so (optional: old clients send centimetres).
            unit=UnitInput("measurement_unit", {"cm": 1.0, "mm": 0.1, "in": 2.54}, default="cm", since=4),
        ),
        Recipe(
            model="taxi-fare",
            data_file="taxi-fare.csv",
            features=(
                Feature("distance_km", Kind.number),
                Feature("duration_min", Kind.number),
                Feature("hour", Kind.integer),
                Feature("passengers", Kind.integer),
                Feature("pickup_zone", Kind.category),
            ),
            label="fare_usd",
            classes=None,
            hidden_units=(64, 32),
            base_epochs=15,
            output="fare_usd",
        ),
    )
}


def recipe_for(model: str) -> Recipe:
    try:
        return RECIPES[model]
    except KeyError:
        raise RecipeError(
            f"no training recipe for model {model!r}; recipes exist for {', '.join(sorted(RECIPES))} "
            "(scripts/training/recipes.py)"
        ) from None
