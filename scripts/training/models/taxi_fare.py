"""Training entrypoint of the taxi-fare example: trip -> fare in USD (models/taxi-fare.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scripts.training.recipes import Feature, Kind, Recipe


def recipe(parameters: Mapping[str, Any]) -> Recipe:
    return Recipe(
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
        epochs=15,
        output="fare_usd",
    )
