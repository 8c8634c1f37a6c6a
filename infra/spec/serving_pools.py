"""Serving pools of a stack (`model-serving:servingPools`): shared TF-Serving workloads for many models.

TF-Serving serves every model its `model_config_list` names from one process, each under its
own `/v1/models/<name>` and `model_name` metric label (tensorflow/serving
tensorflow_serving/config/model_server_config.proto, ModelConfigList). A pool is such a server
for several models of one stack; its size is a base (the server's own CPU and memory) plus each
member's loaded-model memory. The placement of models into pools is `infra.spec.placement`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from infra.spec.errors import FieldProblemsError
from infra.spec.manifest import (
    DEFAULT_MAX_ENQUEUED_BATCHES,
    DEFAULT_NUM_BATCH_THREADS,
    MODEL_NAME_MAX,
    QUANTITY_PATTERN,
    Batching,
)
from infra.spec.scaling import ScalingMetric, metric_problems
from infra.spec.settings_base import Settings

# Shards are named `<pool>-<index>`; with the `-canary` and Pulumi's auto-name suffixes, a pool
# name leaves room for them under the model-name bound (a shard's Service shares the namespace
# with the models' Services).
POOL_NAME_MAX = MODEL_NAME_MAX - 3
POOL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_SHARDS = 64
DEFAULT_MAX_MODELS = 64
# Production stacks keep models with at least this availability objective out of pools unless
# the stack says otherwise (servingPools.dedicatedAvailability).
PRODUCTION_DEDICATED_AVAILABILITY = 0.999

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
PoolName = Annotated[str, StringConstraints(pattern=POOL_NAME_PATTERN, min_length=1, max_length=POOL_NAME_MAX)]


class Packing(StrEnum):
    auto = "auto"  # every model that may share and names no pool lands here
    explicit = "explicit"  # only models whose environment names the pool


class PoolResources(Settings):
    """What one pool pod requests besides its members: the TF-Serving server's own share."""

    cpu: Quantity = Field(description="CPU request of a pool pod's server (the members share it; e.g. 2).")
    memory: Quantity = Field(
        description="The server's own memory (base); a pod requests this plus each member's `model_memory`."
    )
    cpu_limit: Quantity | None = Field(default=None, description="CPU limit; defaults to the request.")


class PoolAutoscaling(Settings):
    min_replicas: int = Field(ge=1, strict=True, description="Fewest pool pods.")
    max_replicas: int = Field(ge=1, strict=True, description="Most pool pods.")
    target_cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=100,
        strict=True,
        description="Average CPU utilisation (% of request) the HPA aims for (metric cpu).",
    )
    metric: ScalingMetric = Field(
        default=ScalingMetric.cpu,
        strict=False,
        description="`cpu`: a HorizontalPodAutoscaler on CPU; `requests`: a KEDA ScaledObject on the sum of the "
        "members' prediction calls per second served by the shard (docs/autoscaling.md).",
    )
    target_requests_per_second: float | None = Field(
        default=None, gt=0, description="Prediction calls per second one pool pod takes, all members together."
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolAutoscaling:
        problems = metric_problems(self.metric, self.target_requests_per_second, "targetRequestsPerSecond")
        if self.min_replicas > self.max_replicas:
            problems.append(("minReplicas", f"Got {self.min_replicas}, greater than maxReplicas {self.max_replicas}"))
        if problems:
            raise FieldProblemsError(problems)
        return self


class PoolBatching(Settings):
    """Server-side batching of a pool's server: TF-Serving's batching parameters apply to every
    model of the process (`--batching_parameters_file`, model_servers/main.cc)."""

    max_batch_size: int = Field(gt=0, strict=True)
    batch_timeout_micros: int = Field(ge=0, strict=True)
    num_batch_threads: int = Field(default=DEFAULT_NUM_BATCH_THREADS, gt=0, strict=True)
    max_enqueued_batches: int = Field(default=DEFAULT_MAX_ENQUEUED_BATCHES, gt=0, strict=True)

    def as_batching(self) -> Batching:
        return Batching(**self.model_dump())


class PoolSettings(Settings):
    """One pool: `shards` TF-Serving workloads of the same shape, models spread over them by name."""

    name: PoolName = Field(description="Pool name; its shards are `<name>-0` .. `<name>-<shards-1>`.")
    shards: int = Field(
        default=1,
        ge=1,
        le=MAX_SHARDS,
        strict=True,
        description="Workloads of this pool. A model's shard is chosen from its name alone (rendezvous hashing), "
        "so adding or removing a model moves no other; changing `shards` moves about 1/shards of them.",
    )
    packing: Packing = Field(
        default=Packing.explicit,
        strict=False,
        description="`auto`: models that may share and name no pool land here (at most one pool); `explicit`: "
        "only models whose `environments.<env>.pool` names it.",
    )
    max_models: int = Field(
        default=DEFAULT_MAX_MODELS, ge=1, le=1000, strict=True, description="The most members one shard may hold."
    )
    resources: PoolResources
    autoscaling: PoolAutoscaling
    batching: PoolBatching | None = Field(
        default=None,
        description="Server-side batching of the pool's server; a model with `batching` joins only a pool whose "
        "batching is the same (TF-Serving batches every model of a process alike).",
    )

    def shard_names(self) -> list[str]:
        return [shard_name(self.name, index) for index in range(self.shards)]


def shard_name(pool: str, index: int) -> str:
    """`shared-3`: the name of a pool's workload, its Service and its component."""
    return f"{pool}-{index}"


class ServingPoolsSettings(Settings):
    pools: tuple[PoolSettings, ...] = Field(default=(), strict=False, description="The stack's serving pools.")
    dedicated_availability: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Models whose `serving.slo.availability` is at least this are never pooled (kept apart from "
        f"co-tenants); a production stack defaults to {PRODUCTION_DEDICATED_AVAILABILITY}.",
    )

    @model_validator(mode="after")
    def _names(self) -> ServingPoolsSettings:
        names = [pool.name for pool in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FieldProblemsError([("pools", f"pool names must be unique; repeated: {', '.join(duplicates)}")])
        auto = [pool.name for pool in self.pools if pool.packing is Packing.auto]
        if len(auto) > 1:
            raise FieldProblemsError([("pools", f"at most one pool packs automatically; got {', '.join(auto)}")])
        return self

    def by_name(self, name: str) -> PoolSettings | None:
        return next((pool for pool in self.pools if pool.name == name), None)

    @property
    def auto(self) -> PoolSettings | None:
        return next((pool for pool in self.pools if pool.packing is Packing.auto), None)

    def keep_apart_at(self, production: bool) -> float | None:
        """The availability objective from which a model stays dedicated, if any."""
        if self.dedicated_availability is not None:
            return self.dedicated_availability
        return PRODUCTION_DEDICATED_AVAILABILITY if production else None
