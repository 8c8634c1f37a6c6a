"""The model shelf: which models exist, who owns them, how their versions compare, which version each
environment serves, and what TF-Serving has actually loaded; what `modelctl status` and
`modelctl catalog` show.

Read from the validated manifests and stack files only (nothing below sees a raw dict). The live
part asks TF-Serving's REST status API (`GET /v1/models/<name>`, g3doc/api_rest.md) through the
stack's route with the same HTTP code as `modelctl smoke`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.spec.manifest import LABEL_CANARY, LABEL_STABLE, ModelManifest, ServedModel, load_manifests
from infra.spec.settings import RouteKind, StackSettings, load_stack_settings, stack_names
from infra.spec.shadow import LABEL_SHADOW
from scripts.modelctl import sinks
from scripts.modelctl.cost import HOURS_PER_MONTH, Span, StackCost, basis, declared_costs, money_span, no_prices_note
from scripts.modelctl.smoke import AVAILABLE, model_status, status_url


@dataclass(frozen=True)
class EnvironmentState:
    """What one environment of a manifest serves, and the stacks that serve that environment."""

    environment: str
    stacks: tuple[str, ...]
    stable: int
    canary: int | None = None
    canary_weight: int | None = None
    # The version that takes a copy of `shadow_percent`% of the requests and answers no client.
    shadow: int | None = None
    shadow_percent: int | None = None

    def labels(self) -> dict[int, str]:
        """Version -> the TF-Serving label it is served under."""
        labels = {self.stable: LABEL_STABLE}
        if self.canary is not None:
            labels[self.canary] = LABEL_CANARY
        return labels


@dataclass(frozen=True)
class ShelfModel:
    manifest: ModelManifest
    environments: tuple[EnvironmentState, ...]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def metric_names(self) -> list[str]:
        """Every metric any version reports, the promotion metric first."""
        names = {name for version in self.manifest.versions.values() for name in version.metrics}
        first = self.manifest.promotion.metric
        return ([first] if first in names else []) + sorted(names - {first})

    def environment(self, name: str) -> EnvironmentState | None:
        return next((e for e in self.environments if e.environment == name), None)


@dataclass(frozen=True)
class Shelf:
    models: tuple[ShelfModel, ...]
    stacks: dict[str, StackSettings]
    # The estimated cost of what each priced stack declares (cost.declared_costs); empty: not asked.
    costs: dict[str, StackCost] = field(default_factory=dict)

    def model_costs(self, model: str) -> list[tuple[str, Span, StackCost]]:
        """(stack, monthly cost at min and max replicas, the stack's costs) of every priced stack
        that serves `model`."""
        found = []
        for stack, costs in sorted(self.costs.items()):
            monthly = costs.per_model().get(model)
            if monthly is not None:
                found.append((stack, monthly, costs))
        return found

    def unpriced_stacks(self) -> list[str]:
        return sorted(stack for stack, settings in self.stacks.items() if settings.prices is None)

    def model(self, name: str) -> ShelfModel:
        return next(m for m in self.models if m.name == name)


def load_shelf(root: Path, stack: str | None = None, with_costs: bool = False) -> Shelf:
    """Every model (or, with `stack`, those its environment serves) with every environment it is
    served in (or only the stack's); `with_costs`: and what each priced stack's models cost (runs
    the program offline). Raises ConfigError on an invalid project, as every command."""
    manifests = load_manifests(root)
    names = [stack] if stack is not None else stack_names(root)
    stacks = {name: load_stack_settings(root, name) for name in names}
    stacks_of: dict[str, list[str]] = {}
    for name, settings in stacks.items():
        stacks_of.setdefault(settings.environment, []).append(name)
    models = []
    for manifest in sorted(manifests, key=lambda m: m.name):
        environments = []
        for env, served in manifest.environments.items():
            if stack is not None and env not in stacks_of:
                continue
            canary, shadow = served.canary, served.shadow
            environments.append(
                EnvironmentState(
                    env,
                    tuple(stacks_of.get(env, ())),
                    served.stable,
                    canary.version if canary else None,
                    canary.weight if canary else None,
                    shadow.version if shadow else None,
                    shadow.percent if shadow else None,
                )
            )
        if stack is None or environments:
            models.append(ShelfModel(manifest, tuple(environments)))
    costs = declared_costs(root, stacks) if with_costs else {}
    return Shelf(tuple(models), stacks, costs)


def stack_base_url(settings: StackSettings) -> str:
    """The URL clients call the stack's models at: https where the route terminates TLS (a Gateway
    always does here; an Ingress when the stack names a certificate)."""
    routing = settings.routing
    scheme = "https" if routing.tls_secret_name or routing.kind is RouteKind.gateway else "http"
    return f"{scheme}://{routing.host}"


def stack_servers(manifest: ModelManifest, stacks: dict[str, StackSettings]) -> list[tuple[str, str]]:
    """(url, description) of every stack that routes to the model: the OpenAPI document's servers."""
    servers = []
    for stack, settings in stacks.items():
        served = manifest.environments.get(settings.environment)
        if served is None or not manifest.serving_for(settings.environment).ingress:
            continue
        labels = ", ".join(f"{label} {v}" for label, v in sorted(served.labels().items()))
        servers.append((stack_base_url(settings), f"stack {stack} ({labels})"))
    return servers


@dataclass(frozen=True)
class LiveStatus:
    """What TF-Serving answered for one model, against what the manifest declares."""

    model: str
    url: str
    declared: dict[int, str]  # version -> label
    loaded: dict[int, str] | None  # version -> state; None when the model could not be asked
    differences: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    error: str = ""

    @property
    def matches(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "reachable": self.loaded is not None,
            "loaded": None
            if self.loaded is None
            else [{"version": v, "state": s} for v, s in sorted(self.loaded.items())],
            "matches": self.matches,
            "differences": list(self.differences),
            "notes": list(self.notes),
        }


def compare_loaded(model: ServedModel, url: str, loaded: dict[int, str] | None, error: str = "") -> LiveStatus:
    """Flag every difference between the versions TF-Serving reports and those the manifest serves."""
    declared = {version: label for label, version in model.version_labels.items()}
    if loaded is None:
        return LiveStatus(model.name, url, declared, None, (f"unreachable: {error}",), error=error)
    differences: list[str] = []
    notes: list[str] = []
    for version in sorted(set(loaded) - set(declared)):
        differences.append(f"version {version} is loaded ({loaded[version]}) but not declared")
    for version, label in sorted(declared.items()):
        state = loaded.get(version)
        if state is not None and state != AVAILABLE:
            differences.append(f"version {version} ({label}) is {state}, not {AVAILABLE}")
    missing = sorted(set(declared) - set(loaded))
    shadow = model.version_labels.get(LABEL_SHADOW)
    if shadow in missing:
        # The route only mirrors to the shadow and drops its answers (docs/shadow.md): a status
        # request through the route never reaches it.
        missing.remove(shadow)
        declared_routed = len(declared) - 1
        notes.append(f"version {shadow} ({LABEL_SHADOW}) not seen: a shadow answers no client through the route")
    else:
        declared_routed = len(declared)
    if model.has_canary and len(missing) < declared_routed:
        # The canary runs in its own workload behind the same weighted route: one status request
        # reaches one of the two workloads, which loads only its own label's version.
        for version in missing:
            notes.append(
                f"version {version} ({declared[version]}) not seen: the other workload behind the weighted "
                "route serves it"
            )
    else:
        for version in missing:
            differences.append(f"version {version} ({declared[version]}) is declared but not loaded")
    return LiveStatus(model.name, url, declared, loaded, tuple(differences), tuple(notes))


def live_status(models: Iterable[ServedModel], base_url: str, timeout: float = 10.0) -> list[LiveStatus]:
    found = []
    for model in models:
        url = status_url(base_url, model.name)
        loaded, error = model_status(url, timeout)
        found.append(compare_loaded(model, url, loaded, error))
    return found


@dataclass(frozen=True)
class StatusReport:
    shelf: Shelf
    stack: str | None = None
    base_url: str | None = None
    live: dict[str, LiveStatus] = field(default_factory=dict)

    @property
    def differs(self) -> bool:
        return any(not status.matches for status in self.live.values())


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_text(report: StatusReport) -> str:
    lines: list[str] = []
    for model in report.shelf.models:
        manifest = model.manifest
        lines.append(f"{model.name} · {manifest.owner}")
        lines.append(f"  {manifest.description}")
        metrics = model.metric_names
        versions = [["version", *metrics, "digest"]]
        for number, published in sorted(manifest.versions.items()):
            values = [f"{published.metrics[m]:g}" if m in published.metrics else "-" for m in metrics]
            versions.append([str(number), *values, published.digest.removeprefix("sha256:")[:12]])
        lines += _table(versions)
        environments = [["environment", "stacks", "stable", "canary", "weight", "shadow (mirrored)"]]
        for env in model.environments:
            environments.append(
                [
                    env.environment,
                    ", ".join(env.stacks) or "(no stack)",
                    str(env.stable),
                    "-" if env.canary is None else str(env.canary),
                    "-" if env.canary_weight is None else f"{env.canary_weight}%",
                    "-" if env.shadow is None else f"{env.shadow} ({env.shadow_percent}%)",
                ]
            )
        lines += _table(environments) if len(environments) > 1 else ["  served in no environment"]
        costs = report.shelf.model_costs(model.name)
        if costs:
            rows = [["stack", "estimated cost (min–max replicas)"]]
            rows += [
                [stack, money_span(monthly, c.prices.currency if c.prices else "USD")] for stack, monthly, c in costs
            ]
            lines += _table(rows)
        status = report.live.get(model.name)
        if status is not None:
            lines.append(f"  live: GET {status.url}")
            if status.loaded is not None:
                loaded = [["version", "state", "declared"]]
                for version, state in sorted(status.loaded.items()):
                    loaded.append([str(version), state, status.declared.get(version, "no")])
                lines += _table(loaded, indent="    ") if len(loaded) > 1 else ["    no version loaded"]
            lines += [f"    DIFFERENCE: {d}" for d in status.differences]
            lines += [f"    note: {n}" for n in status.notes]
            if status.matches:
                lines.append("    matches the manifest")
        lines.append("")
    for stack, costs in sorted(report.shelf.costs.items()):
        if costs.prices is not None:
            lines.append(f"cost on {stack}: {basis(costs.prices)}")
    if report.shelf.costs or report.stack is not None:
        lines += [f"cost: {no_prices_note(stack)}" for stack in report.shelf.unpriced_stacks()]
    if report.live:
        differ = [s.model for s in report.live.values() if not s.matches]
        where = f"stack {report.stack} at {report.base_url}"
        verdict = f"{len(differ)} differ from the manifests: {', '.join(differ)}" if differ else "all match"
        lines.append(f"{len(report.live)} model(s) live on {where}: {verdict}")
    # Each line quotes manifests and a server's answers: a control in a value stays in its line.
    return "\n".join(sinks.terminal(line) for line in lines) + "\n"


def render_json(report: StatusReport) -> dict[str, Any]:
    models = []
    for model in report.shelf.models:
        manifest = model.manifest
        entry: dict[str, Any] = {
            "name": model.name,
            "owner": manifest.owner,
            "description": manifest.description,
            "versions": [
                {"version": number, "digest": published.digest, "metrics": dict(published.metrics)}
                for number, published in sorted(manifest.versions.items())
            ],
            "environments": [
                {
                    "environment": env.environment,
                    "stacks": list(env.stacks),
                    "stable": env.stable,
                    "canary": env.canary,
                    "weight": env.canary_weight,
                    "shadow": None if env.shadow is None else {"version": env.shadow, "percent": env.shadow_percent},
                }
                for env in model.environments
            ],
        }
        costs = report.shelf.model_costs(model.name)
        if costs:
            entry["cost"] = {stack: {"min": round(m[0], 4), "max": round(m[1], 4)} for stack, m, _ in costs}
        if model.name in report.live:
            entry["live"] = report.live[model.name].to_json()
        models.append(entry)
    document: dict[str, Any] = {"stack": report.stack, "models": models}
    if report.shelf.costs:
        document["prices"] = {
            stack: {
                "source": c.prices.source,
                "date": c.prices.date,
                "currency": c.prices.currency,
                "hoursPerMonth": HOURS_PER_MONTH,
            }
            for stack, c in sorted(report.shelf.costs.items())
            if c.prices is not None
        }
    if report.live:
        document |= {"baseUrl": report.base_url, "matches": not report.differs}
    return document
