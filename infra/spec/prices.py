"""A stack's price table (`model-serving:prices`): what its requests cost per hour, and where the figures come from.

The figures are the stack owner's, never the program's: each table names its source and the date
it was read, and the plan prints both next to every estimate. How they are used: docs/cost.md.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator, model_validator

from infra.spec.errors import FieldProblemsError
from infra.spec.instances import INSTANCE_TYPES
from infra.spec.settings_base import Settings

DEFAULT_CURRENCY = "USD"
PER_UNIT_FIELDS = ("cpuCoreHour", "memoryGibHour", "gpuHour")
HourlyPrice = Annotated[float, Field(ge=0)]


class PriceTable(Settings):
    """Hourly prices: per instance type on an EKS stack (`instances`), per requested unit on an
    existing cluster (`cpuCoreHour`, `memoryGibHour`, `gpuHour`)."""

    source: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Where the figures come from: a price page's URL, a contract, or 'illustrative figures, "
        "not a quote'. Shown with every estimate."
    )
    date: Annotated[str, StringConstraints(min_length=1, max_length=10)] = Field(
        description="The ISO date (YYYY-MM-DD, quoted) the figures were read.",
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        default=DEFAULT_CURRENCY, description="ISO 4217 code of the prices (default USD)."
    )
    cpu_core_hour: HourlyPrice | None = Field(default=None, description="Price of one requested CPU core for an hour.")
    memory_gib_hour: HourlyPrice | None = Field(default=None, description="Price of one requested GiB for an hour.")
    gpu_hour: HourlyPrice | None = Field(default=None, description="Price of one requested GPU for an hour.")
    instances: dict[str, Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="An EKS stack's on-demand price per hour of each instance type its node groups use."
    )

    @field_validator("date", mode="before")
    @classmethod
    def _date_as_written(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-06-17 as a date; Pulumi hands the program config values as
        # strings (and plans print the config as JSON), so the file must say it as one.
        if isinstance(value, datetime.date):
            raise ValueError(f'write the date quoted: date: "{value.isoformat()}"')
        return value

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"Got {value!r}; expected an ISO date, YYYY-MM-DD") from None
        if len(value) != 10:
            raise ValueError(f"Got {value!r}; expected an ISO date, YYYY-MM-DD")
        return value

    @field_validator("source")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("say where the figures come from (a URL, a contract, or 'illustrative figures')")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> PriceTable:
        problems = []
        per_unit = [name for name in PER_UNIT_FIELDS if getattr(self, _snake(name)) is not None]
        if self.instances is not None and per_unit:
            problems.append(("instances", f"give instance prices or per-unit prices ({', '.join(per_unit)}), not both"))
        elif self.instances is None:
            problems += [(name, "required for per-unit prices") for name in PER_UNIT_FIELDS[:2] if name not in per_unit]
        for name in sorted(self.instances or {}):
            if name not in INSTANCE_TYPES:
                problems.append((f"instances.{name}", f"unknown instance type; known: {', '.join(INSTANCE_TYPES)}"))
        if problems:
            raise FieldProblemsError(problems)
        return self

    @property
    def per_instance(self) -> bool:
        return self.instances is not None

    def describe(self) -> str:
        """Where the figures come from, as every estimate quotes it."""
        return f"{self.source}, read {self.date}"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def price_table_problems(
    prices: PriceTable, node_groups: Mapping[str, str] | None, gpu_nodes: bool
) -> list[tuple[str, str]]:
    """What the table lacks for its stack, as (path under the stack's settings, message).
    `node_groups`: an EKS stack's node groups (config path -> instance type); None on an existing
    cluster. `gpu_nodes`: whether the cluster has GPU nodes (then a GPU has a price)."""
    if node_groups is not None:
        if not prices.per_instance:
            return [("prices.instances", "an eks stack is priced per instance type of its node groups")]
        return [
            (
                "prices.instances",
                f"no price for {instance_type!r}, the instance type of {path}; every node group's type needs one",
            )
            for path, instance_type in node_groups.items()
            if instance_type not in (prices.instances or {})
        ]
    if prices.per_instance:
        return [("prices.instances", "an existing cluster is priced per unit (cpuCoreHour, memoryGibHour, gpuHour)")]
    if gpu_nodes and prices.gpu_hour is None:
        return [("prices.gpuHour", "required: the cluster has GPU nodes")]
    return []
