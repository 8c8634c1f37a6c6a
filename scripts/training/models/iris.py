"""Training entrypoint of the iris example: Fisher's measurements -> species (models/iris.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scripts.training.recipes import Feature, Kind, Recipe, UnitInput


def recipe(parameters: Mapping[str, Any]) -> Recipe:
    return Recipe(
        features=tuple(
            Feature(name, Kind.number) for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
        ),
        label="species",
        classes=("setosa", "versicolor", "virginica"),
        hidden_units=(16,),
        epochs=40,
        # Fisher's measurements are in centimetres; from version 4 a client may send
        # millimetres or inches and say so (optional: old clients send centimetres).
        unit=UnitInput("measurement_unit", {"cm": 1.0, "mm": 0.1, "in": 2.54}, default="cm", since=4),
    )
