"""How each example model is trained: its data file, features, label and network. No TensorFlow here."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
# One split for every version, so versions are compared on the same held-out rows.
SPLIT_SEED = 7
TEST_FRACTION = 0.2


class RecipeError(Exception):
    """No recipe for a model, or its data file is unusable."""


@dataclass(frozen=True)
class Recipe:
    model: str
    data_file: str
    features: tuple[str, ...]
    label: str
    classes: tuple[str, ...] | None  # classification when set, else regression
    hidden_units: tuple[int, ...]
    base_epochs: int

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def epochs(self, version: int) -> int:
        """Later versions train longer: successive versions are real candidates, not copies."""
        return self.base_epochs * min(version, 6)

    def load(self) -> tuple[list[list[float]], list[float]]:
        """Features and labels (class index for classifiers) of every row."""
        path = DATA_DIR / self.data_file
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read: {exc.strerror}") from None
        features, labels = [], []
        for number, row in enumerate(rows, start=2):
            try:
                features.append([float(row[name]) for name in self.features])
                value = row[self.label]
                labels.append(float(self.classes.index(value)) if self.classes else float(value))
            except (KeyError, ValueError) as exc:
                raise RecipeError(f"{path}: line {number}: {exc}") from None
        return features, labels


RECIPES = {
    recipe.model: recipe
    for recipe in (
        Recipe(
            model="iris",
            data_file="iris.csv",
            features=("sepal_length", "sepal_width", "petal_length", "petal_width"),
            label="species",
            classes=("setosa", "versicolor", "virginica"),
            hidden_units=(16,),
            base_epochs=40,
        ),
        Recipe(
            model="taxi-fare",
            data_file="taxi-fare.csv",
            features=("distance_km", "duration_min", "hour", "passengers"),
            label="fare",
            classes=None,
            hidden_units=(64, 32),
            base_epochs=15,
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
