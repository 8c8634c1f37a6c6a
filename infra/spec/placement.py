"""Which models of a stack share a serving pool, and which shard of it: decided per environment, stably.

A model's shard is a function of its own name and the stack's pool settings only (rendezvous,
or highest-random-weight, hashing: Thaler & Ravishankar, "Using name-based mappings to increase
hit rates", IEEE/ACM ToN 6(1), 1998). So adding, removing or bumping one model never moves
another between shards, and a plan's blast radius stays that model's pool; growing a pool by a
shard moves only the models whose highest weight is the new shard (about 1/shards of them).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes.utils.quantity import parse_quantity

from infra.spec.errors import ConfigError, ErrorItem
from infra.spec.manifest import MODELS_DIR, Isolation, ServedModel
from infra.spec.serving_pools import PoolSettings, shard_name
from infra.spec.settings import STACKS_DIR, StackSettings, stack_file


@dataclass(frozen=True)
class Shard:
    """One pool workload and the models it serves (by name)."""

    name: str
    pool: PoolSettings
    members: tuple[ServedModel, ...]

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def member_memory(self) -> dict[str, int]:
        """Bytes each member adds to a pod's memory request."""
        return {m.name: model_memory_bytes(m) for m in self.members}

    def memory_bytes(self) -> int:
        """A pod's memory request: the server's base plus every member's loaded model."""
        return int(parse_quantity(self.pool.resources.memory)) + sum(self.member_memory().values())

    def storage_bytes(self) -> int:
        """The emptyDir the members' served versions are copied into: the sum of their own limits."""
        return sum(int(parse_quantity(m.serving.resources.model_storage)) for m in self.members)


@dataclass(frozen=True)
class Placement:
    """A stack's pools (non-empty shards, by name) and each pooled model's shard."""

    shards: tuple[Shard, ...] = ()

    @property
    def shard_of(self) -> dict[str, str]:
        return {member.name: shard.name for shard in self.shards for member in shard.members}

    def shard(self, name: str) -> Shard:
        return next(shard for shard in self.shards if shard.name == name)


def model_memory_bytes(model: ServedModel) -> int:
    resources = model.serving.resources
    return int(parse_quantity(resources.model_memory or resources.memory))


def quantity_bytes(value: int) -> str:
    """A byte count as a Kubernetes quantity, in Mi when it divides evenly (as people write them)."""
    mebibyte = 1024 * 1024
    return f"{value // mebibyte}Mi" if value % mebibyte == 0 else str(value)


def shard_index(model_name: str, pool: PoolSettings) -> int:
    """The shard with the highest weight for this model: sha256 of (pool, shard, model)."""
    return _highest_weight(pool.name, pool.shards, model_name)


@functools.lru_cache(maxsize=1 << 16)
def _highest_weight(pool_name: str, shards: int, model_name: str) -> int:
    # A pure function of its arguments, asked for every model by validation, the program and
    # the plan on every stack: a thousand-model plan computed it 28,000 times.
    def weight(index: int) -> int:
        digest = hashlib.sha256(f"{pool_name}\0{index}\0{model_name}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    return max(range(shards), key=weight)


def why_dedicated(model: ServedModel, settings: StackSettings, pool: PoolSettings | None = None) -> str | None:
    """Why the model cannot join `pool` (or any pool) in this stack, or None if it may."""
    serving = model.serving
    if serving.isolation is Isolation.dedicated:
        return "isolation: dedicated"
    if serving.resources.gpu:
        return "a GPU model runs on its own GPU nodes"
    if serving.batching is not None:
        # --batching_parameters_file configures the whole server (model_servers/main.cc), not one model.
        pool_batching = pool.batching.as_batching() if pool is not None and pool.batching is not None else None
        if pool_batching != serving.batching:
            return (
                "its server-side batching differs from the pool's (TF-Serving batches every model of a process "
                "alike): give the pool the same `batching`, or keep the model dedicated"
            )
    keep_apart = settings.serving_pools.keep_apart_at(settings.production)
    if keep_apart is not None and serving.slo.availability >= keep_apart:
        return (
            f"its availability objective {serving.slo.availability} is at least "
            f"servingPools.dedicatedAvailability {keep_apart} of stack {settings.stack}: kept apart from co-tenants"
        )
    return None


def _manifest_file(model: ServedModel) -> str:
    return f"{MODELS_DIR}/{model.name}.yaml"


def placement_errors(settings: StackSettings, served: Sequence[ServedModel]) -> list[ErrorItem]:
    try:
        place(settings, served)
    except ConfigError as exc:
        return exc.errors
    return []


# Placements made in this process, by what placing reads: the stack's name, whether it runs
# Flagger, whether it is production, its pool settings (immutable, hashable), and each served
# model, which is its manifest as one environment serves it (manifest.served_in). Manifests and
# their per-environment serving are immutable and kept alive by the entry, so their identities
# are part of the key. Validation, the program and the plan place every stack several times per
# plan; at a thousand models each placement is some 15 ms.
_PLACED: OrderedDict[tuple, tuple[Sequence[ServedModel], Placement | list[ErrorItem]]] = OrderedDict()
_PLACED_LIMIT = 64


def place(settings: StackSettings, served: Sequence[ServedModel]) -> Placement:
    """The stack's shards; a ConfigError naming file and field when a placement is impossible."""
    key = (
        settings.stack,
        bool(settings.flagger),
        settings.production,
        settings.serving_pools,
        tuple((id(m.manifest), m.environment, id(m.serving), m.pool) for m in served),
    )
    if key in _PLACED:
        _PLACED.move_to_end(key)
        placed = _PLACED[key][1]
    else:
        try:
            placed = _place(settings, served)
        except ConfigError as exc:
            placed = exc.errors
        _PLACED[key] = (tuple(served), placed)
        if len(_PLACED) > _PLACED_LIMIT:
            _PLACED.popitem(last=False)
    if isinstance(placed, list):
        raise ConfigError(list(placed))
    return placed


def _place(settings: StackSettings, served: Sequence[ServedModel]) -> Placement:
    pools = settings.serving_pools
    errors: list[ErrorItem] = []
    chosen: dict[str, list[ServedModel]] = {}
    pool_of_shard: dict[str, PoolSettings] = {}
    auto = pools.auto  # asked once, not per model of a fleet
    for model in served:
        field = f"environments.{model.environment}.pool"
        if model.pool is not None:
            pool = pools.by_name(model.pool)
            if pool is None:
                known = ", ".join(p.name for p in pools.pools) or "none"
                why = (
                    " (serving pools are off on Flagger stacks: docs/pools.md)"
                    if settings.flagger
                    else " (model-serving:servingPools)"
                )
                errors.append(
                    ErrorItem(
                        _manifest_file(model),
                        field,
                        f"Got {model.pool!r}; stack {settings.stack} declares the serving pools: {known}{why}",
                    )
                )
                continue
            reason = why_dedicated(model, settings, pool)
            if reason is not None:
                errors.append(
                    ErrorItem(_manifest_file(model), field, f"names pool {model.pool}, but cannot share: {reason}")
                )
                continue
        elif auto is not None and why_dedicated(model, settings, auto) is None:
            pool = auto
        else:
            continue
        shard = shard_name(pool.name, shard_index(model.name, pool))
        chosen.setdefault(shard, []).append(model)
        pool_of_shard[shard] = pool
    names = {model.name for model in served}
    stack_display = f"{STACKS_DIR}/{stack_file(Path('.'), settings.stack).name}"
    for shard, members in sorted(chosen.items()):
        pool = pool_of_shard[shard]
        index = pools.pools.index(pool)
        if len(members) > pool.max_models:
            errors.append(
                ErrorItem(
                    stack_display,
                    f"config.model-serving:servingPools.pools[{index}].maxModels",
                    f"shard {shard} of pool {pool.name} would hold {len(members)} models, more than maxModels "
                    f"{pool.max_models}; raise maxModels or shards, or keep some models dedicated",
                )
            )
        if shard in names:
            errors.append(
                ErrorItem(
                    _manifest_file(next(m for m in served if m.name == shard)),
                    "name",
                    f"the workload and Service of shard {shard} (pool {pool.name}, stack {settings.stack}) "
                    "have this model's name; rename the pool or the model",
                )
            )
    if errors:
        raise ConfigError(errors)
    shards = tuple(
        Shard(name, pool_of_shard[name], tuple(sorted(members, key=lambda m: m.name)))
        for name, members in sorted(chosen.items())
    )
    return Placement(shards)
