"""The base of every stack-settings model (settings.py, prices.py, serving_pools.py), and the field types
several of them share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)]


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
