"""The champion/challenger gate (`modelctl promote`) and `modelctl rollback`, as manifest edits."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.platform.object_store import check_version, s3_client, version_prefix
from infra.spec.errors import ConfigError
from infra.spec.manifest import DEFAULT_CANARY_WEIGHT, LABEL_CANARY, LABEL_STABLE, MODELS_DIR, Goal, ModelManifest
from infra.spec.project import validate_project
from infra.spec.settings import StackSettings
from infra.spec.shadow import LABEL_SHADOW, Shadow
from infra.spec.validators import version_problem
from infra.spec.yamlio import parse_yaml
from scripts.modelctl import manifest_edit, sinks
from scripts.modelctl.shadow_verdict import ShadowVerdictError, Verdict, read_verdict

# Metric differences below this are float noise (0.972 - 0.967 is not exactly 0.005).
EPSILON = 1e-9


class PromotionError(Exception):
    """The gate refused, or the candidate is not a trustworthy version; the message says why."""


@dataclass(frozen=True)
class Comparison:
    metric: str
    goal: Goal
    min_delta: float
    champion: int | None
    champion_value: float | None
    candidate: int
    candidate_value: float

    @property
    def improvement(self) -> float | None:
        if self.champion_value is None:
            return None
        delta = self.candidate_value - self.champion_value
        return delta if self.goal is Goal.maximize else -delta

    @property
    def passed(self) -> bool:
        # Better by more than the minimum delta; no champion: nothing to beat.
        return self.improvement is None or self.improvement > self.min_delta + EPSILON

    def describe(self) -> str:
        direction = "higher" if self.goal is Goal.maximize else "lower"
        # The metric's name is manifest text, and this is printed line by line.
        metric = sinks.terminal(self.metric)
        candidate = f"candidate v{self.candidate}: {metric} = {self.candidate_value:g}"
        if self.champion is None:
            return f"{candidate}; no stable version yet, nothing to beat"
        champion = f"champion v{self.champion}: {metric} = {self.champion_value:g}"
        verdict = "passes" if self.passed else "fails"
        return (
            f"{candidate}\n{champion}\n"
            f"improvement {self.improvement:+g} ({direction} is better); the rule needs more than "
            f"{self.min_delta:g}: {verdict}"
        )


def stacks_serving(root: Path, environment: str) -> list[StackSettings]:
    settings, errors = validate_project(root)
    if errors:
        raise ConfigError(errors)
    stacks = [s for s in settings.values() if s.environment == environment]
    if not stacks:
        known = sorted({s.environment for s in settings.values()})
        raise PromotionError(f"no stack serves environment {environment!r} (environments: {', '.join(known)})")
    return stacks


def require_committed(manifest: ModelManifest, version: int, stacks: list[StackSettings], client: Any = None) -> None:
    """Refuse a version that is not published in the manifest and committed, with its digest, in every store."""
    if version not in manifest.versions:
        published = ", ".join(str(v) for v in sorted(manifest.versions))
        raise PromotionError(f"{manifest.name} version {version} is not published (published: {published})")
    for stack in stacks:
        store = stack.object_store
        prefix = version_prefix(store.prefix, manifest.artifact.path, version)
        problem = check_version(
            client or s3_client(store), store.bucket, prefix, manifest.versions[version].digest, store.integrity
        )
        if problem is not None:
            raise PromotionError(
                f"{manifest.name} version {version} is not usable in stack {stack.stack}: "
                f"{problem.key}: {problem.message}"
            )


def compare(manifest: ModelManifest, environment: str, candidate: int) -> Comparison:
    rule = manifest.promotion
    served = manifest.environments.get(environment)
    champion = served.stable if served is not None else None

    def value(version: int) -> float:
        metrics = manifest.versions[version].metrics
        if rule.metric not in metrics:
            raise PromotionError(
                f"{manifest.name} version {version} has no {rule.metric!r} metric "
                f"(the promotion rule's); it has {', '.join(sorted(metrics)) or 'none'}"
            )
        return metrics[rule.metric]

    return Comparison(
        rule.metric,
        rule.goal,
        rule.min_delta,
        champion,
        value(champion) if champion is not None else None,
        candidate,
        value(candidate),
    )


def require_shadow_verdict(
    model: str, shadow: Shadow, stacks: list[StackSettings], prometheus: str | None = None
) -> list[Verdict]:
    """The shadow verdict of every stack serving the environment, read from its Prometheus
    (`prometheus`, else the stack's monitoring.prometheusAddress, else progressiveDelivery's);
    a PromotionError unless it holds in every one."""
    verdicts = []
    for stack in stacks:
        delivery = stack.progressive_delivery
        address = prometheus or stack.monitoring.prometheus_address or (delivery and delivery.prometheus_address)
        if not address:
            raise PromotionError(
                f"stack {stack.stack} names no Prometheus to read the shadow verdict from "
                "(monitoring.prometheusAddress); pass --prometheus URL"
            )
        try:
            verdict = read_verdict(address, stack.namespace, model, shadow, f"stack {stack.stack}")
        except ShadowVerdictError as exc:
            raise PromotionError(f"{model}: no shadow verdict in stack {stack.stack}: {exc}") from None
        if not verdict.holds:
            raise PromotionError(f"{model}: {verdict.describe()}")
        verdicts.append(verdict)
    return verdicts


def promote(
    root: Path,
    model: str,
    environment: str,
    version: int | None = None,
    canary: bool = False,
    client: Any = None,
    weight: int = DEFAULT_CANARY_WEIGHT,
    gate: Comparison | None = None,
    require_shadow: bool = False,
    prometheus: str | None = None,
    report: Callable[[str], None] = lambda line: None,
) -> Comparison:
    """Gate `version` (default: the newest published) against the stable version of `environment`;
    on success serve it there as stable (or canary).

    `gate`: a comparison measured elsewhere, used instead of the manifest's recorded metrics;
    `modelctl retrain` passes the one it measured on the frozen evaluation set, champion included
    (a recorded metric may come from other data, so it is not evidence).

    `require_shadow`: the candidate is the environment's shadow version (default), and besides the
    offline gate its shadow verdict must hold in every stack serving the environment
    (docs/shadow.md); `prometheus` overrides the stacks' address, `report` gets each verdict."""
    manifest = manifest_edit.load(root, model)
    if not manifest.versions:
        raise PromotionError(f"{model} has no published version yet: `modelctl publish` one first")
    served = manifest.environments.get(environment)
    shadow = served.shadow if served is not None else None
    if require_shadow:
        if shadow is None:
            raise PromotionError(
                f"{model} has no shadow in {environment}, so no shadow verdict: declare "
                f"environments.{environment}.shadow and let it serve mirrored calls first"
            )
        if version is not None and version != shadow.version:
            raise PromotionError(
                f"{model} version {version} is not the shadow in {environment} (the shadow serves "
                f"{shadow.version}); the verdict is about the shadow's version only"
            )
        version = shadow.version
    candidate = version if version is not None else max(manifest.versions)
    if served is not None and served.stable == candidate:
        raise PromotionError(f"{model} version {candidate} is already stable in {environment}")
    if canary and served is None:
        raise PromotionError(f"{model} has no stable version in {environment}; promote one before a canary")
    stacks = stacks_serving(root, environment)
    if canary:
        for stack in stacks:
            if stack.flagger:
                raise PromotionError(
                    f"stack {stack.stack} rolls versions out with Flagger: promote without --canary, "
                    "Flagger runs the canary"
                )
            if stack.routing.kind.value == "ingress":
                raise PromotionError(f"stack {stack.stack} routes by Ingress, which cannot split traffic by weight")
    require_committed(manifest, candidate, stacks, client)
    comparison = gate if gate is not None else compare(manifest, environment, candidate)
    if not comparison.passed:
        raise PromotionError(
            f"{model}: the challenger does not beat the champion in {environment}\n{comparison.describe()}"
        )
    if require_shadow:
        assert shadow is not None  # checked above
        for verdict in require_shadow_verdict(model, shadow, stacks, prometheus):
            report(verdict.describe())

    def change(document):
        if canary:
            manifest_edit.set_canary(document, environment, candidate, weight)
        else:
            manifest_edit.set_label(document, environment, LABEL_STABLE, candidate)
            # Promoting the canary ends it: its workload goes, the stable one serves it.
            if served is not None and served.canary is not None:
                manifest_edit.drop_label(document, environment, LABEL_CANARY)
        # A shadow of the promoted version has done its job: its workload goes.
        if shadow is not None and shadow.version == candidate:
            manifest_edit.drop_label(document, environment, LABEL_SHADOW)

    manifest_edit.edit(root, model, change)
    return comparison


def stable_history(root: Path, model: str, environment: str) -> list[int]:
    """The stable version of `environment` in each commit that touched the manifest, newest first."""
    path = f"{MODELS_DIR}/{model}.yaml"
    log = subprocess.run(["git", "-C", str(root), "log", "--format=%H", "--", path], capture_output=True, text=True)
    if log.returncode != 0:
        raise PromotionError(f"{root}: not a git repository; rollback reads the manifest's history from git")
    history = []
    for commit in log.stdout.split():
        shown = subprocess.run(["git", "-C", str(root), "show", f"{commit}:./{path}"], capture_output=True, text=True)
        if shown.returncode != 0:
            continue
        try:
            # History is input too: the same bounds as the working tree's manifests.
            document = parse_yaml(shown.stdout, path)
            stable = document["environments"][environment]["stable"]
        except (ConfigError, KeyError, TypeError):
            continue
        # A rollback target is a version like any other: 1..2^63-1 (infra/spec/validators.py).
        if isinstance(stable, int) and not isinstance(stable, bool) and version_problem(stable) is None:
            history.append(stable)
    return history


def rollback(root: Path, model: str, environment: str, client: Any = None) -> tuple[int, int]:
    """Serve the stable version `environment` had before the current one; (from, to)."""
    manifest = manifest_edit.load(root, model)
    served = manifest.environments.get(environment)
    if served is None:
        raise PromotionError(f"{model} is not served in {environment}")
    current = served.stable
    previous = next((v for v in stable_history(root, model, environment) if v != current), None)
    if previous is None:
        raise PromotionError(
            f"{model} has served only version {current} as stable in {environment} in this history; "
            "there is nothing to roll back to"
        )
    require_committed(manifest, previous, stacks_serving(root, environment), client)
    manifest_edit.edit(root, model, lambda d: manifest_edit.set_label(d, environment, LABEL_STABLE, previous))
    return current, previous
