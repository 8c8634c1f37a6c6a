"""The shadow block of a manifest environment (`environments.<env>.shadow`): a challenger that takes
mirrored traffic and answers no client, and the verdict `modelctl promote --require-shadow` reads
(docs/shadow.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from infra.spec.validators import VersionNumber

# TF-Serving's version labels must match [a-zA-Z0-9_]+ (g3doc/serving_config.md).
LABEL_SHADOW = "shadow"
DEFAULT_SHADOW_PERCENT = 10
DEFAULT_MIN_DURATION_MINUTES = 60
DEFAULT_MIN_REQUESTS = 1000
DEFAULT_MAX_ERROR_RATIO_INCREASE = 0.01
DEFAULT_MAX_LATENCY_INCREASE = 0.2


class ShadowVerdict(BaseModel):
    """What a shadow must show before `modelctl promote --require-shadow` promotes its version."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    min_duration_minutes: int = Field(
        default=DEFAULT_MIN_DURATION_MINUTES,
        ge=1,
        le=30 * 24 * 60,
        description="Minutes the shadow must have served mirrored calls (and the window the verdict compares).",
    )
    min_requests: int = Field(
        default=DEFAULT_MIN_REQUESTS,
        ge=1,
        description="Fewest mirrored prediction calls the shadow must have served in that window.",
    )
    max_error_ratio_increase: float = Field(
        default=DEFAULT_MAX_ERROR_RATIO_INCREASE,
        ge=0,
        le=1,
        description="Largest amount (0..1, absolute) by which the shadow's error ratio may exceed the stable's.",
    )
    max_latency_increase: float = Field(
        default=DEFAULT_MAX_LATENCY_INCREASE,
        ge=0,
        description="Largest relative increase of the shadow's p95 latency over the stable's (0.2: 20% slower).",
    )


class Shadow(BaseModel):
    """A challenger served beside the stable version on a copy of `percent`% of its requests."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    version: VersionNumber = Field(description="Published version the shadow workload serves.")
    percent: int = Field(
        default=DEFAULT_SHADOW_PERCENT,
        ge=1,
        le=100,
        strict=True,
        description="Share of the route's requests copied to the shadow, %; its responses are discarded.",
    )
    verdict: ShadowVerdict = Field(
        default_factory=ShadowVerdict,
        description="Thresholds `modelctl promote --require-shadow` holds the shadow to (docs/shadow.md).",
    )
