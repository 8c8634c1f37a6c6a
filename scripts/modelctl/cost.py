"""Estimated monthly cost of what a stack declares: requests at minimum and maximum replicas times the stack's prices.

An estimate, from the stack's own price table (`model-serving:prices`, infra/spec/prices.py), of
what is *requested*, never of what is used, and at on-demand prices: no storage, network,
control plane or load balancer. A month is 730 hours (365 days * 24 h / 12), the month AWS's
pricing calculator uses. The rules, with examples: docs/cost.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.spec.instances import INSTANCE_TYPES, InstanceType
from infra.spec.prices import PriceTable
from infra.spec.settings import StackSettings
from scripts.modelctl import plan, sinks
from scripts.modelctl.plan import PLATFORM, Capacity

HOURS_PER_MONTH = 730
GIB = 2**30
MIB = 2**20
NO_CHANGE = "no change"


class Kind:
    model = "model"
    pool = "pool"
    member = "member"  # a pooled model's share of its pool
    platform = "platform"


Span = tuple[float, float]  # (at minimum replicas, at maximum replicas)


def unit_hourly(cpu: float, memory: float, gpu: float, prices: PriceTable) -> float:
    """One pod's hourly price on an existing cluster: cores * cpuCoreHour + GiB * memoryGibHour +
    GPUs * gpuHour (`memory` in bytes)."""
    hourly = cpu * (prices.cpu_core_hour or 0.0) + memory / GIB * (prices.memory_gib_hour or 0.0)
    if gpu:
        if prices.gpu_hour is None:
            raise ValueError("the pod requests a GPU and the price table has no gpuHour")
        hourly += gpu * prices.gpu_hour
    return hourly


def instance_share_hourly(cpu: float, memory: float, gpu: float, instance: InstanceType, hourly: float) -> float:
    """One pod's hourly price on an EKS node group: the instance's hourly price times the pod's
    dominant share of the instance, max(cores / vCPUs, memory / instance memory, GPUs / instance GPUs).

    The dominant share is what the pod keeps others from using: a node holding pods that each take
    a quarter of its memory and little CPU is full at four, whatever CPU is left. Shares are of the
    instance's nominal size (its vCPUs and memory as EC2 sells them), not of what the kubelet lets
    pods request, so a node's pods never add up to more than its price."""
    shares = [cpu / instance.vcpus, memory / (instance.memory_mib * MIB)]
    if gpu:
        if not instance.gpus:
            raise ValueError(f"{instance.name} has no GPU")
        shares.append(gpu / instance.gpus)
    return hourly * max(shares)


def pod_hourly(capacity: Capacity, settings: StackSettings) -> float:
    """One pod's hourly price under the stack's prices: per instance share on EKS (the GPU node
    group when the pod requests a GPU, else the CPU group), per unit on an existing cluster."""
    prices = settings.prices
    assert prices is not None
    eks = settings.cluster.eks
    if eks is None:
        return unit_hourly(capacity.cpu, capacity.memory, capacity.gpu, prices)
    group = eks.gpu_nodes if capacity.gpu else eks.cpu_nodes
    if group is None:
        raise ValueError("the pod requests a GPU and the stack has no GPU node group")
    instance = INSTANCE_TYPES[group.instance_type]
    return instance_share_hourly(
        capacity.cpu, capacity.memory, capacity.gpu, instance, (prices.instances or {})[instance.name]
    )


def monthly(capacity: Capacity, settings: StackSettings) -> Span:
    """The component's monthly cost at its minimum and maximum replicas."""
    per_pod = pod_hourly(capacity, settings) * HOURS_PER_MONTH
    return (per_pod * capacity.min_replicas, per_pod * capacity.max_replicas)


def member_shares(pod_memory: float, members: Mapping[str, float]) -> dict[str, float]:
    """Each pooled model's fraction of its pool: (base / N + its memory) / the pod's memory request,
    where base = pod memory request - the members' memory (the server itself, shared evenly by the
    N members). The fractions add up to 1: the pool's whole cost is shared out."""
    if not members:
        return {}
    base = pod_memory - sum(members.values())
    if pod_memory <= 0 or base < 0:
        raise ValueError(
            f"the members' memory ({sum(members.values()):g} B) exceeds the pod's request ({pod_memory:g} B)"
        )
    return {name: (base / len(members) + memory) / pod_memory for name, memory in members.items()}


@dataclass(frozen=True)
class Estimate:
    """What one component (or one pooled model's share of its pool) requests at minimum and maximum
    replicas, and costs per month; `monthly` None: the stack has no prices."""

    name: str
    kind: str
    cpu: Span
    memory: Span  # bytes
    gpu: Span
    monthly: Span | None
    pool: str | None = None  # a member's pool
    model: str | None = None  # the model a canary's or a shadow's workload serves (plan.Capacity.model)


@dataclass(frozen=True)
class StackCost:
    stack: str
    prices: PriceTable | None
    estimates: tuple[Estimate, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def priced(self) -> bool:
        return self.prices is not None

    def total(self) -> Span | None:
        """The stack's monthly cost: every component, pools whole (their members' shares are in them)."""
        if self.prices is None:
            return None
        components = [e.monthly for e in self.estimates if e.kind != Kind.member and e.monthly is not None]
        return (sum(m[0] for m in components), sum(m[1] for m in components))

    def per_model(self) -> dict[str, Span]:
        """Each model's monthly cost: its own workloads (stable, canary, shadow) plus its share of a pool."""
        costs: dict[str, Span] = {}
        for estimate in self.estimates:
            if estimate.kind in (Kind.model, Kind.member) and estimate.monthly is not None:
                model = estimate.model or estimate.name
                low, high = costs.get(model, (0.0, 0.0))
                costs[model] = (low + estimate.monthly[0], high + estimate.monthly[1])
        return costs

    def rows(self) -> dict[tuple[str, str], Estimate]:
        return {(e.kind, e.name): e for e in self.estimates}


def no_prices_note(stack: str) -> str:
    return f"no price table in stack {stack} (model-serving:prices)"


def stack_cost(stack: str, capacities: Mapping[str, Capacity], settings: StackSettings | None) -> StackCost:
    """Per component of `capacities` (capacity() of one run) its requests and, when the stack has
    prices, its monthly cost; a pool's members (its Deployment's members annotation) their shares."""
    prices = settings.prices if settings is not None else None
    estimates: list[Estimate] = []
    notes: list[str] = [] if prices is not None else [f"{no_prices_note(stack)}: capacity only"]
    for name, capacity in sorted(capacities.items()):
        totals = capacity.totals()
        cost = None
        if prices is not None and settings is not None:
            try:
                cost = monthly(capacity, settings)
            except ValueError as error:
                notes.append(f"{name}: not priced: {error}")
        kind = Kind.platform if name == PLATFORM else Kind.pool if capacity.members else Kind.model
        estimates.append(
            Estimate(name, kind, totals["cpu"], totals["memory"], totals["gpu"], cost, model=capacity.model)
        )
        if not capacity.members:
            continue
        try:
            shares = member_shares(capacity.memory, dict(capacity.members))
        except ValueError as error:
            notes.append(f"pool {name}: no shares: {error}")
            continue
        for member, share in shares.items():
            estimates.append(
                Estimate(
                    member,
                    Kind.member,
                    _scaled(totals["cpu"], share),
                    _scaled(totals["memory"], share),
                    _scaled(totals["gpu"], share),
                    _scaled(cost, share) if cost is not None else None,
                    pool=name,
                )
            )
    return StackCost(stack, prices, tuple(estimates), tuple(notes))


def declared_costs(root: Path, stacks: Mapping[str, StackSettings]) -> dict[str, StackCost]:
    """The cost of what each priced stack of `stacks` declares now (the working tree's program run
    offline, as a plan's head): what `modelctl status` and the catalog show per model."""
    from scripts.modelctl.snapshot import take

    priced = sorted(stack for stack, settings in stacks.items() if settings.prices is not None)
    runs = take(root, priced, short_lived=True).runs if priced else {}
    return {stack: stack_cost(stack, plan.capacity(runs[stack]), stacks[stack]) for stack in priced}


def _scaled(span: Span, factor: float) -> Span:
    return (span[0] * factor, span[1] * factor)


# Words ------------------------------------------------------------------------------------------


def money(value: float, currency: str) -> str:
    amount = f"{value:,.2f}"
    return f"${amount}" if currency == "USD" else f"{amount} {currency}"


def money_span(span: Span | None, currency: str) -> str:
    if span is None:
        return "–"
    low, high = (money(v, currency) for v in span)
    return f"{low}/month" if low == high else f"{low}–{high}/month"


def change(before: Span | None, after: Span | None, currency: str) -> str:
    """`+$12.40/month`, or per bound when minimum and maximum differ; `no change` when none."""
    old = before or (0.0, 0.0)
    new = after or (0.0, 0.0)
    deltas = [round(n - o, 2) for o, n in zip(old, new, strict=True)]
    if deltas == [0.0, 0.0]:
        return NO_CHANGE
    low, high = (NO_CHANGE if not d else ("+" if d > 0 else "−") + money(abs(d), currency) for d in deltas)
    if low == high:
        return f"{low}/month"
    return f"{low}{'' if low == NO_CHANGE else '/month'} at minimum replicas, {high} at maximum"


def changed_rows(before: StackCost, after: StackCost) -> list[tuple[str, str, Estimate | None, Estimate | None]]:
    """(kind, name, before, after) of every model, pool or member whose estimate differs."""
    old, new = before.rows(), after.rows()
    rows = []
    for key in sorted(set(old) | set(new), key=lambda k: (k[1], k[0])):
        if old.get(key) != new.get(key):
            rows.append((key[0], key[1], old.get(key), new.get(key)))
    return rows


def basis(prices: PriceTable) -> str:
    """What the estimates rest on, said once per stack (untrusted: the caller escapes it for its sink)."""
    return f"requests × the stack's prices ({prices.currency}; source: {prices.describe()}); {HOURS_PER_MONTH} h/month"


# Where the figures come from, as every report quotes it: enough to find the source, never a page.
SOURCE_LIMIT = 600


def _source(prices: PriceTable) -> str:
    text = basis(prices)
    return text if len(text) <= SOURCE_LIMIT else f"{text[:SOURCE_LIMIT]}…"


def _label(kind: str, name: str, pool: str | None, code) -> str:
    if kind == Kind.member:
        return f"{code(name)} (its share of pool {code(pool or '')})"
    if kind == Kind.pool:
        return f"pool {code(name)}"
    return code(name)


def summary(before: StackCost, after: StackCost) -> str:
    """`$X-$Y/month → $X'-$Y'/month (+$Z/month)`: the stack's cost before and after."""
    assert after.prices is not None
    currency = after.prices.currency
    old, new = before.total(), after.total()
    return f"{money_span(old, currency)} → {money_span(new, currency)} ({change(old, new, currency)})"


def text_lines(before: StackCost, after: StackCost) -> list[str]:
    """The stack's cost and the rows that change, for the text plan (the caller makes each line
    safe for a terminal)."""
    if after.prices is None:
        return [f"  cost: {note}" for note in after.notes]
    currency = after.prices.currency
    lines = [f"  cost per month: {summary(before, after)}", f"    estimated from {_source(after.prices)}"]
    rows = changed_rows(before, after)
    if rows:
        table = [("", "before", "after", "change")]
        for kind, name, old, new in rows:
            old_cost, new_cost = (e.monthly if e is not None else None for e in (old, new))
            table.append(
                (
                    _label(kind, name, (new or old).pool if (new or old) else None, str),
                    money_span(old_cost, currency),
                    money_span(new_cost, currency),
                    change(old_cost, new_cost, currency),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [f"  cost: {note}" for note in after.notes]
    return lines


def markdown_table(before: StackCost, after: StackCost) -> tuple[list[str], list[str]]:
    """(lines before the rows, one line per row) of the stack's cost in the pull-request comment;
    the price table's source (from the stack file: untrusted) as escaped text, names as code."""
    if after.prices is None:
        return [f"_{sinks.md_text(note.capitalize())}._" for note in after.notes], []
    currency = after.prices.currency
    head = [
        # md_text on our own figures too: GitHub reads `$…$` as inline math.
        f"Estimated cost per month: **{sinks.md_text(summary(before, after))}**",
        "",
        f"_Estimated from {sinks.md_text(_source(after.prices))}._",
    ]
    head += [f"- {sinks.md_text(note)}" for note in after.notes]
    rows = changed_rows(before, after)
    if not rows:
        return head, []
    head += ["", "| model or pool | before | after | change |", "| --- | --- | --- | --- |"]
    cells = []
    code = lambda text: sinks.md_code(text, in_table=True)  # noqa: E731
    for kind, name, old, new in rows:
        old_cost, new_cost = (e.monthly if e is not None else None for e in (old, new))
        pool = (new or old).pool if (new or old) else None
        figures = (money_span(old_cost, currency), money_span(new_cost, currency), change(old_cost, new_cost, currency))
        cells.append(f"| {_label(kind, name, pool, code)} | " + " | ".join(sinks.md_cell(f) for f in figures) + " |")
    return head, cells


def _span_json(span: Span | None) -> dict[str, float] | None:
    return None if span is None else {"min": round(span[0], 4), "max": round(span[1], 4)}


def _estimate_json(estimate: Estimate | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {
        "cpu": _span_json(estimate.cpu),
        "memory": _span_json(estimate.memory),
        "gpu": _span_json(estimate.gpu),
        "monthly": _span_json(estimate.monthly),
    }


def as_json(before: StackCost, after: StackCost) -> dict[str, Any]:
    """The stack's cost in the JSON plan: requests and monthly cost of every component before and
    after, the totals and their change; without prices, requests only and the note."""
    document: dict[str, Any] = {"priced": after.prices is not None, "hoursPerMonth": HOURS_PER_MONTH}
    if after.prices is not None:
        old, new = before.total() or (0.0, 0.0), after.total() or (0.0, 0.0)
        document |= {
            "currency": after.prices.currency,
            "source": after.prices.source,
            "date": after.prices.date,
            "before": _span_json(old),
            "after": _span_json(new),
            "change": _span_json((new[0] - old[0], new[1] - old[1])),
        }
    if after.notes:
        document["notes"] = list(after.notes)
    old_rows, new_rows = before.rows(), after.rows()
    document["components"] = [
        {"name": name, "kind": kind}
        | ({"pool": pool} if (pool := (new_rows.get((kind, name)) or old_rows[(kind, name)]).pool) else {})
        | ({"model": model} if (model := (new_rows.get((kind, name)) or old_rows[(kind, name)]).model) else {})
        | {"before": _estimate_json(old_rows.get((kind, name))), "after": _estimate_json(new_rows.get((kind, name)))}
        for kind, name in sorted(set(old_rows) | set(new_rows), key=lambda k: (k[1], k[0]))
    ]
    return document
