"""The base of every stack-settings model (settings.py, prices.py): frozen, strict, camelCase keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Settings(BaseModel):
    """Base of the settings models: immutable, camelCase keys as Pulumi config spells them,
    numbers finite (as in the manifests: see manifest.Frozen)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        populate_by_name=False,
        allow_inf_nan=False,
    )
