"""Plans as text, as a pull-request comment (markdown) and as `pulumi preview --json`-shaped JSON."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.offline import DeclaredResource, OfflineRun, mask_secrets
from infra.spec.manifest import MANIFEST_SUFFIXES, MODELS_DIR
from infra.spec.settings import load_stack_settings, read_stack_config
from scripts.modelctl import comment, contract, cost, handover, incremental, sinks, snapshot
from scripts.modelctl import scope as scope_module
from scripts.modelctl.comment import COMMENT_BUDGET
from scripts.modelctl.plan import Capacity, ComponentKind, Op, PoolImpact, StackPlan, Step, capacity, plan_stack
from scripts.modelctl.plancache import PlanCache
from scripts.modelctl.render import dump_yaml
from scripts.modelctl.scope import Scope

COMMENT_MARKER = "<!-- modelctl-plan -->"
# Of the comment's budget (comment.COMMENT_BUDGET), at most this much goes to YAML diffs by default.
DIFF_BUDGET = 50_000
SYMBOLS = {Op.same: " ", Op.create: "+", Op.update: "~", Op.replace: "+-", Op.delete: "-"}
SUMMARY_ORDER = (Op.create, Op.update, Op.replace, Op.delete, Op.same)
WORDS = {Op.create: "to create", Op.update: "to update", Op.replace: "to replace", Op.delete: "to delete"}


@dataclass
class PlanReport:
    """Everything a report shows: the plans, where they came from, and what the change touched."""

    plans: list[StackPlan]
    base_label: str | None  # None: no base, everything is a create
    head_label: str
    touched_models: set[str] | None = None  # models whose manifest the change edits; None: unknown
    base_capacity: dict[str, dict[str, Capacity]] = field(default_factory=dict)
    head_capacity: dict[str, dict[str, Capacity]] = field(default_factory=dict)
    # Per stack, both sides priced with the head's price table (cost.py); empty: not estimated.
    base_cost: dict[str, cost.StackCost] = field(default_factory=dict)
    head_cost: dict[str, cost.StackCost] = field(default_factory=dict)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stack, secrets masked
    head_runs: dict[str, OfflineRun] = field(default_factory=dict)  # whole stacks, in either mode
    # Per stack, the served versions that move and what that does to the clients (contract.py).
    contracts: dict[str, list[contract.ContractReview]] = field(default_factory=dict)
    scope: Scope | None = None  # which plan ran and why; None: not said

    @property
    def has_changes(self) -> bool:
        return any(p.changes for p in self.plans)

    def blast_radius(self) -> list[str]:
        """Models that change: by their own resources, or as members of a pool that changes."""
        return sorted({m for p in self.plans for m in p.affected_models()})

    def untouched_but_affected(self) -> list[str]:
        """Models whose own resources change although the change does not edit their manifest
        (a co-tenant of a pool that changes is not one: its pool says why, `pool_causes`)."""
        if self.touched_models is None:
            return []
        changed = {m for p in self.plans for m in p.models_with_changes()}
        return sorted(m for m in changed if m not in self.touched_models)

    def pool_causes(self, impact: PoolImpact) -> list[str] | None:
        """The pool's members (before or after) whose manifests the change edits; None: unknown."""
        return impact.edited_members(self.touched_models)

    def untouched_pools(self) -> list[tuple[str, PoolImpact]]:
        """(stack, pool) that change although the change edits none of their members' manifests."""
        return [(p.stack, i) for p in self.plans for i in p.pool_impacts() if self.pool_causes(i) == []]


def plan_scope(root: Path, base_ref: str | None, allow_incremental: bool = True) -> Scope:
    """Which plan runs against `base_ref` (None: nothing), and why."""
    if not base_ref:
        return scope_module.full("no base revision: every resource is a create")
    # Refused before any git call if it could be read as an option; every later call gets
    # the resolved commit, never the text given (snapshot.resolve_commit).
    snapshot.resolve_commit(root, base_ref)
    return scope_module.scope_of_change(root, base_ref, allow_incremental)


def build_report(
    root: Path,
    stacks: Sequence[str],
    base_ref: str | None,
    cache: PlanCache | None = None,
    allow_incremental: bool = True,
    scope: Scope | None = None,
    jobs: int = 1,
) -> PlanReport:
    """Plan `stacks` of the working tree at `root` against revision `base_ref` (None: nothing).

    Incremental when the change can reach only the models whose manifests it edits (see
    `incremental`), else full. Either way the runs below are whole stacks in one canonical
    order, and everything from the diff to the capacity is computed from them by the same code:
    the two modes differ only in how the unchanged models' resources were obtained.
    `cache`: where models' resources and base runs are kept between runs (None: nowhere).
    `scope`: the plan's mode, when the caller classified the change already (`plan_scope`).
    `jobs`: 2 lets an incremental plan declare what the cache lacks in two processes.
    """
    if scope is None:
        scope = plan_scope(root, base_ref, allow_incremental)
    if scope.incremental:
        assert base_ref is not None
        base_runs, head_runs = incremental.incremental_runs(root, base_ref, stacks, scope, cache, jobs)
    else:
        head_runs = snapshot.take(root, stacks, short_lived=True).runs
        base_runs = (
            snapshot.of_revision(root, base_ref, stacks).runs
            if base_ref
            else {stack: OfflineRun(stack=stack) for stack in stacks}
        )
        # A full plan is also the first plan of every model under this program: keep them, so
        # the next pull request on top of it plans incrementally from the cache.
        for tree, runs in ((scope.head, head_runs), (scope.base, base_runs)):
            if cache is not None and tree is not None:
                store = incremental.PieceStore(cache, tree.program_digest())
                for run in runs.values():
                    store.put_run(run, tree.manifests())
        head_runs = {stack: incremental.in_canonical_order(run) for stack, run in head_runs.items()}
        base_runs = {stack: incremental.in_canonical_order(run) for stack, run in base_runs.items()}
    if base_ref:
        touched: set[str] | None = {
            Path(path).stem
            for path in snapshot.changed_files(root, base_ref)
            if path.startswith(f"{MODELS_DIR}/") and Path(path).suffix in MANIFEST_SUFFIXES
        }
    else:
        touched = None
    base_capacity = {stack: capacity(run) for stack, run in base_runs.items()}
    head_capacity = {stack: capacity(run) for stack, run in head_runs.items()}
    # The head's prices on both sides: the change is what the declared change costs, not a price update.
    settings = {stack: load_stack_settings(root, stack) for stack in stacks}
    return PlanReport(
        plans=[plan_stack(stack, base_runs[stack], head_runs[stack]) for stack in stacks],
        base_label=base_ref,
        head_label="working tree",
        touched_models=touched,
        base_capacity=base_capacity,
        head_capacity=head_capacity,
        base_cost={s: cost.stack_cost(s, base_capacity.get(s, {}), settings[s]) for s in stacks},
        head_cost={s: cost.stack_cost(s, head_capacity.get(s, {}), settings[s]) for s in stacks},
        config={stack: mask_secrets(read_stack_config(root, stack)) for stack in stacks},
        head_runs=head_runs,
        contracts=contract.stack_reviews(root, stacks, base_ref),
        scope=scope,
    )


def summary_line(plan: StackPlan) -> str:
    counts = plan.summary()
    if not plan.changes:
        return f"no changes ({counts.get('same', 0)} unchanged)"
    parts = [f"{counts[op.value]} {WORDS[op]}" for op in SUMMARY_ORDER[:-1] if counts.get(op.value)]
    parts.append(f"{counts.get('same', 0)} unchanged")
    return ", ".join(parts)


def _why(step: Step, limit: int = 4, quote=str) -> str:
    if step.op is Op.create:
        return "new"
    if step.op is Op.delete:
        return "no longer declared"
    paths = [quote(d.path) + (" (forces replacement)" if d.replaces else "") for d in step.diffs]
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


# Text -----------------------------------------------------------------------------------------


def render_text(report: PlanReport) -> str:
    """Per stack a summary, then one line per changed resource (type, name, parent, why)."""
    lines = []
    source = f"{report.base_label} -> {report.head_label}" if report.base_label else report.head_label
    if report.scope is not None:
        lines.append(f"Mode: {report.scope.describe()}")
    for plan in report.plans:
        lines.append(f"Stack {plan.stack} ({source}): {summary_line(plan)}")
        changes = plan.changes
        type_width = max((len(s.type) for s in changes), default=0)
        name_width = max((len(s.name) for s in changes), default=0)
        for step in changes:
            parent = step.resource.parent.rsplit("::", 1)[-1] if step.resource.parent else "-"
            lines.append(
                f"  {SYMBOLS[step.op]:<2} {step.type:<{type_width}}  {step.name:<{name_width}}  "
                f"parent: {parent}  {step.op.value}: {_why(step)}"
            )
        if changes:
            models = plan.affected_models()
            platform = " (and the platform)" if plan.platform_changed else ""
            lines.append(f"  blast radius: {', '.join(models) if models else 'no model'}{platform}")
        for impact in plan.pool_impacts():
            lines.append(f"  {impact.describe()}")
            causes = report.pool_causes(impact)
            if causes:
                lines.append(f"  pool {impact.pool} changes because {', '.join(causes)} changed")
        lines += _capacity_text(report, plan.stack)
        if plan.stack in report.head_cost:
            lines += cost.text_lines(report.base_cost[plan.stack], report.head_cost[plan.stack])
        lines += contract.text_lines(report.contracts.get(plan.stack, []))
    for model in report.untouched_but_affected():
        lines.append(f"warning: {model} changes although its manifest is untouched")
    for stack, impact in report.untouched_pools():
        lines.append(
            f"warning: pool {impact.pool} of stack {stack} changes although none of its members' manifests is touched"
        )
    for plan in report.plans:
        for step in handover.handovers(plan):
            lines.append(f"warning: {step.describe()}; before pulumi up, run:")
            lines.append(f"  {sinks.shell_command(step.command())}")
    # Each line quotes the change (refs, names, paths): a control in a value stays in its line.
    return "\n".join(sinks.terminal(line) for line in lines) + "\n"


# Capacity -------------------------------------------------------------------------------------


CAPACITY_HEADINGS = ("model", "replicas", "CPU (cores)", "memory", "GPU")


def _capacity_text(report: PlanReport, stack: str) -> list[str]:
    """The capacity rows as an aligned table under its headings, for the text plan."""
    rows = _capacity_rows(report, stack)
    if not rows:
        return []
    table = [CAPACITY_HEADINGS[: len(rows[0])], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  capacity, before → after (replicas min–max; requests of all replicas at min–max):"]
    return lines + ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]


def _cores(value: float) -> str:
    return f"{value:g}"


def _bytes(value: float) -> str:
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _span(low: float, high: float, fmt) -> str:
    return fmt(low) if low == high else f"{fmt(low)}–{fmt(high)}"


def _describe(capacity: Capacity | None, gpu: bool) -> tuple[str, ...]:
    if capacity is None:
        return ("–",) * (4 if gpu else 3)
    totals = capacity.totals()
    described = (
        _span(capacity.min_replicas, capacity.max_replicas, str),
        _span(*totals["cpu"], _cores),
        _span(*totals["memory"], _bytes),
    )
    return (*described, _span(*totals["gpu"], _cores)) if gpu else described


def _sum(capacities: Mapping[str, Capacity], gpu: bool) -> tuple[str, ...]:
    low_replicas = sum(c.min_replicas for c in capacities.values())
    high_replicas = sum(c.max_replicas for c in capacities.values())
    sums = {k: [sum(c.totals()[k][i] for c in capacities.values()) for i in (0, 1)] for k in ("cpu", "memory", "gpu")}
    summed = (
        _span(low_replicas, high_replicas, str),
        _span(*sums["cpu"], _cores),
        _span(*sums["memory"], _bytes),
    )
    return (*summed, _span(*sums["gpu"], _cores)) if gpu else summed


def _capacity_rows(report: PlanReport, stack: str, name=str) -> list[tuple[str, ...]]:
    """(model or `pool <shard>`, replicas, CPU, memory[, GPU]) rows with `before → after`, for the
    workloads whose capacity changes, then their total; the GPU column when a workload of the
    stack requests GPUs on either side; `name` formats a name (markdown quotes it)."""
    before = report.base_capacity.get(stack, {})
    after = report.head_capacity.get(stack, {})
    gpu = any(c.gpu for c in (*before.values(), *after.values()))
    rows = []
    for model in sorted(set(before) | set(after)):
        if before.get(model) == after.get(model):
            continue
        old, new = _describe(before.get(model), gpu), _describe(after.get(model), gpu)
        either = after.get(model) or before.get(model)
        label = f"pool {name(model)}" if either is not None and either.kind is ComponentKind.pool else name(model)
        rows.append((label, *(f"{o} → {n}" for o, n in zip(old, new, strict=True))))
    if rows:
        old, new = _sum(before, gpu), _sum(after, gpu)
        rows.append(("total", *(f"{o} → {n}" for o, n in zip(old, new, strict=True))))
    return rows


# Markdown -------------------------------------------------------------------------------------


def _yaml(resource: DeclaredResource | None) -> list[str]:
    if resource is None:
        return []
    return dump_yaml(resource.state).splitlines(keepends=True)


def unified_yaml_diff(step: Step) -> str:
    old_name = f"{step.old.name} (base)" if step.old else "/dev/null"
    new_name = f"{step.new.name} (head)" if step.new else "/dev/null"
    return "".join(difflib.unified_diff(_yaml(step.old), _yaml(step.new), old_name, new_name, n=3))


def _code(text: str) -> str:
    return sinks.md_code(text)


def _cell_code(text: str) -> str:
    return sinks.md_code(text, in_table=True)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


# How many models the blast radius names before "and N more": its line stays readable and
# small next to the budget (a model name is a DNS label, at most 63 characters).
BLAST_RADIUS_NAMES = 200
SEPARATE_WARNINGS = 5  # untouched models that change, each with its own warning; more: one for all
# The order the budget is spent in (comment.assemble): what a reviewer needs first, first.
HEAD, RADIUS, TABLES, CONTRACTS, DIFFS = range(5)
LOCAL_FULL_PLAN = "modelctl plan --format markdown --max-chars 0 --max-diff-chars 0"


def render_markdown(
    report: PlanReport,
    diff_budget: int = DIFF_BUDGET,
    budget: int = COMMENT_BUDGET,
    full_plan: str | None = None,
    full_plan_url: str | None = None,
) -> str:
    """The pull-request comment: at most `budget` characters (0: no limit), of which YAML diffs
    `diff_budget` at most (0: no limit but the budget). What does not fit is cut whole, in the
    reverse order of `comment.assemble`'s priorities, and a note says what and where the full
    plan is: `full_plan` (e.g. the workflow run's artifact and job summary) and `full_plan_url`
    (a link), else the local command. Every value from the change (refs, stacks, models,
    resources, paths, contract details) goes through `sinks`, so none can change the comment's
    structure."""
    # The head is bounded whatever the change holds: names are clipped, so it always fits.
    source = f"{_code(_clip(report.base_label))} → {report.head_label}" if report.base_label else report.head_label
    title = [COMMENT_MARKER, f"## Offline plan: {source}", ""]
    if report.scope is not None:
        title += [f"_{sinks.md_text(_clip(report.scope.describe().capitalize(), 2_000))}._", ""]
    title += [f"- **{sinks.md_text(_clip(plan.stack))}**: {summary_line(plan)}" for plan in report.plans]
    blocks = [comment.Block(title, HEAD, "summary")]
    if not report.has_changes:
        blocks.append(comment.Block(["No stack changes."], HEAD, "summary"))
        return comment.assemble(blocks, budget)
    radius = report.blast_radius()
    lines = [f"**Blast radius:** {_names(radius) if radius else 'no model'}"]
    platform_stacks = [p.stack for p in report.plans if p.platform_changed]
    if platform_stacks:
        lines.append(f" and the platform of {', '.join(sinks.md_text(s) for s in platform_stacks)}")
    blocks.append(comment.Block(lines, HEAD, "summary", note_here=True))
    pools = _pool_rows(report)
    if pools:
        blocks.append(comment.Block(["**Serving pools that change:**", ""], RADIUS, "pool line", pools))
    untouched = report.untouched_but_affected()
    if len(untouched) > SEPARATE_WARNINGS:
        # A change of the program reaches the whole fleet: one warning, not one per model.
        warning = [
            "> [!WARNING]",
            f"> {len(untouched)} models change although this change does not touch their manifests "
            f"(a code, stack or shared-config change reaches them): {_names(untouched)}.",
        ]
        blocks.append(comment.Block(warning, RADIUS, "warning"))
    for model in untouched if len(untouched) <= SEPARATE_WARNINGS else []:
        warning = [
            "> [!WARNING]",
            f"> {_code(model)} changes although this change does not touch its manifest "
            "(a code, stack or shared-config change reaches it).",
        ]
        blocks.append(comment.Block(warning, RADIUS, "warning"))
    for stack, impact in report.untouched_pools():
        warning = [
            "> [!WARNING]",
            f"> Pool {_code(impact.pool)} of stack {_code(stack)} changes although this change does not touch "
            "any of its members' manifests (a code, stack or shared-config change reaches it).",
        ]
        blocks.append(comment.Block(warning, RADIUS, "warning"))
    for plan in report.plans:
        for step in handover.handovers(plan):
            warning = [
                "> [!WARNING]",
                f"> {step.describe(_code)}. Before `pulumi up`, run "
                f"{_code(sinks.shell_command(step.command()))} (docs/autoscaling.md).",
            ]
            blocks.append(comment.Block(warning, RADIUS, "warning"))
    for plan in report.plans:
        if plan.changes:
            blocks += _stack_blocks(report, plan)
    return comment.assemble(
        blocks,
        budget,
        {"diff": diff_budget},
        full_plan,
        LOCAL_FULL_PLAN if budget > 0 or diff_budget > 0 else "",
        full_plan_url,
    )


def _pool_rows(report: PlanReport) -> list[str]:
    """One list item per pool that changes: what its members go through, and which edited member caused it."""
    rows = []
    several = len(report.plans) > 1
    for plan in report.plans:
        for impact in plan.pool_impacts():
            row = f"- {f'stack {_code(plan.stack)}, ' if several else ''}{impact.describe(_code)}."
            causes = report.pool_causes(impact)
            if causes:
                row += f" Pool {_code(impact.pool)} changes because {_names(causes)} changed."
            rows.append(row)
    return rows


def _names(models: list[str]) -> str:
    named = ", ".join(_code(m) for m in models[:BLAST_RADIUS_NAMES])
    return named + (f" and {len(models) - BLAST_RADIUS_NAMES} more" if len(models) > BLAST_RADIUS_NAMES else "")


def _stack_blocks(report: PlanReport, plan: StackPlan) -> list[comment.Block]:
    blocks = [comment.Block([f"### Stack {_code(plan.stack)}: {summary_line(plan)}"], TABLES, "stack heading")]
    rows = _capacity_rows(report, plan.stack, _cell_code)
    if rows:
        pooled = any(label.startswith("pool ") for label, *_ in rows)
        columns = [("model or pool" if pooled else "model"), *CAPACITY_HEADINGS[1 : len(rows[0])]]
        head = [
            "Capacity (replicas min–max × requests), before → after:",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + " --- |" * len(columns),
        ]
        cells = [
            f"| {'**total**' if index == len(rows) - 1 else row[0]} | " + " | ".join(row[1:]) + " |"
            for index, row in enumerate(rows)
        ]
        blocks.append(comment.Block(head, TABLES, "capacity table", cells))
    if plan.stack in report.head_cost:
        head, cells = cost.markdown_table(report.base_cost[plan.stack], report.head_cost[plan.stack])
        blocks.append(comment.Block(head, TABLES, "cost table", cells))
    head, cells = contract.markdown_table(report.contracts.get(plan.stack, []))
    if cells:
        blocks.append(comment.Block(head, CONTRACTS, "contract review", cells))
    for kind, component in _components_in_order(plan):
        changes = [s for s in plan.changes if (s.kind, s.component) == (kind, component)]
        head = [
            f"#### {kind.value.capitalize()} {_code(component) if component else ''}".rstrip(),
            "",
            "| resource | operation | why |",
            "| --- | --- | --- |",
        ]
        cells = [
            f"| {_cell_code(s.type)} {_cell_code(s.name)} | {s.op.value} | {_why(s, quote=_cell_code)} |"
            for s in changes
        ]
        blocks.append(comment.Block(head, TABLES, "resource table", cells))
        for step in changes:
            summary = sinks.md_html_inline(f"{step.type.rsplit(':', 1)[-1]} {step.name}: {step.op.value}")
            details = [
                f"<details><summary>{summary}</summary>",
                "",
                sinks.md_fenced(unified_yaml_diff(step), "diff"),
                "",
                "</details>",
            ]
            blocks.append(comment.Block(details, DIFFS, "YAML diff", group="diff"))
    return blocks


def _components_in_order(plan: StackPlan) -> list[tuple[ComponentKind, str]]:
    seen: list[tuple[ComponentKind, str]] = []
    for step in plan.changes:
        if (step.kind, step.component) not in seen:
            seen.append((step.kind, step.component))
    return seen


# JSON -----------------------------------------------------------------------------------------


def _state(resource: DeclaredResource | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    state = {
        "urn": resource.urn,
        "custom": resource.custom,
        "type": resource.type,
        "inputs": resource.inputs,
        "outputs": resource.state,
    }
    if resource.parent:
        state["parent"] = resource.parent
    provider = _provider(resource)
    if provider:
        state["provider"] = provider
    if resource.providers:
        state["providers"] = dict(resource.providers)
    return state


def _provider(resource: DeclaredResource) -> str | None:
    """The provider the engine would use: a custom resource's or a remote component's own
    (for its package); local components have none, only the `providers` they pass down."""
    if resource.custom or resource.remote:
        return resource.provider_for(resource.package)
    return None


def step_json(step: Step) -> dict[str, Any]:
    """One step as `pulumi preview --json` prints it (pkg/backend/display/json.go: previewStep)."""
    document: dict[str, Any] = {"op": step.op.value, "urn": step.urn}
    provider = _provider(step.resource)
    if provider:
        document["provider"] = provider
    if step.resource.providers:
        document["providers"] = dict(step.resource.providers)
    if step.old is not None:
        document["oldState"] = _state(step.old)
    if step.new is not None:
        document["newState"] = _state(step.new)
    if step.diffs:
        document["diffReasons"] = step.diff_reasons
    if step.replace_reasons:
        document["replaceReasons"] = step.replace_reasons
    document["detailedDiff"] = {d.path: {"kind": d.kind.value, "inputDiff": True} for d in step.diffs}
    return document


def stack_json(
    plan: StackPlan,
    config: Mapping[str, Any] | None = None,
    contracts: Sequence[contract.ContractReview] = (),
    costs: tuple[cost.StackCost, cost.StackCost] | None = None,
    touched_models: set[str] | None = None,
) -> dict[str, Any]:
    """`touched_models`: the models whose manifests the change edits (None: unknown), which
    each changed pool's `causedBy` names."""
    document: dict[str, Any] = {"stack": plan.stack}
    if config:
        document["config"] = dict(config)
    document["steps"] = [step_json(s) for s in plan.steps]
    document["changeSummary"] = plan.summary()
    if plan.changes:
        document["blastRadius"] = plan.affected_models()
    impacts = plan.pool_impacts()
    if impacts:
        document["poolChanges"] = [impact.as_json(impact.edited_members(touched_models)) for impact in impacts]
    if contracts:
        document["contractChanges"] = [review.as_json() for review in contracts]
    steps_first = handover.handovers(plan)
    if steps_first:
        document["beforeUpdate"] = [{"reason": h.describe(), "command": h.command()} for h in steps_first]
    if costs is not None:
        document["cost"] = cost.as_json(*costs)
    return document


def render_json(report: PlanReport) -> dict[str, Any]:
    """One stack: the `pulumi preview --json` shape; several: `{"stacks": {name: that shape}}`."""
    documents = {
        p.stack: stack_json(
            p,
            report.config.get(p.stack),
            report.contracts.get(p.stack, ()),
            (report.base_cost[p.stack], report.head_cost[p.stack]) if p.stack in report.head_cost else None,
            report.touched_models,
        )
        for p in report.plans
    }
    mode = {"plan": {"mode": report.scope.mode, "reason": report.scope.reason}} if report.scope else {}
    if len(documents) == 1:
        return next(iter(documents.values())) | mode
    return {"stacks": documents} | mode
