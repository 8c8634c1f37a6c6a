"""`modelctl retrain`: train candidates in parallel on the newest data, measure them and the champion on
the frozen evaluation set, and publish and promote only a winner that beats the champion.

Steps (README, "Continuous training"):
1. Read the newest data (`training.data`) and the frozen evaluation set (its SHA-256 checked).
2. Train the candidates of `training.candidates` in `--jobs` processes (spawned: TensorFlow's
   runtime is not fork-safe, tensorflow/tensorflow#5448); a candidate that crashes, or whose
   metrics are not finite, is reported and excluded, the others go on.
3. Download the champion (the environment's stable version) from the store, verified against its
   digest, and measure it on the same set: its recorded metric may come from other data.
4. The manifest's promotion rule (scripts/modelctl/promote.py: metric, goal, min_delta) picks the
   winner; the winner's SavedModel must load and answer the example request (publish checks it
   before anything is uploaded); it is published and promoted as `training.promote_as` says.
Every run writes report.json and report.md (and pr-body.md, the pull request's description).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.platform.object_store import (
    CHECKSUMS_FILE,
    StoreError,
    check_version,
    describe,
    parse_checksum_list,
    s3_client,
    version_prefix,
)
from infra.spec.manifest import MODELS_DIR, Goal, ModelManifest, PromoteAs
from scripts.modelctl import manifest_edit, sinks
from scripts.modelctl.promote import Comparison, PromotionError, promote, stacks_serving

EXIT_NO_WINNER = 3  # nothing published: no candidate beats the champion (or none is usable)
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
PR_BODY = "pr-body.md"
RESULT_SUFFIX = ".result.json"
ERROR_CHARS = 300


class RetrainError(Exception):
    """Retraining cannot start or cannot finish (bad arguments, unreadable store); the message says why."""


@dataclass
class CandidateOutcome:
    name: str
    parameters: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    error: str | None = None
    excluded: str | None = None

    def value(self, metric: str) -> float | None:
        return self.metrics.get(metric)


@dataclass
class ChampionOutcome:
    version: int | None
    recorded: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RetrainReport:
    model: str
    environment: str
    metric: str
    goal: str
    min_delta: float
    data: dict[str, Any]
    evaluation: dict[str, Any]
    candidates: list[CandidateOutcome]
    champion: ChampionOutcome
    decision: str = "refused"  # promoted | refused
    reasons: list[str] = field(default_factory=list)
    winner: str | None = None
    version: int | None = None
    promoted_as: str | None = None
    next_version: int = 0  # the number a winner is published as

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"


# -- workers (top level: a spawned process imports them by name) ------------------------------------


def train_candidate(task: dict[str, Any]) -> dict[str, Any]:
    """Train one candidate; never raises (a crash is this candidate's result, not the run's)."""
    try:
        from scripts.training.recipes import recipe_of
        from scripts.training.train import train

        root = Path(task["root"])
        manifest = manifest_edit.load(root, task["model"])
        recipe = recipe_of(root, manifest, task["parameters"])
        trained = train(
            manifest,
            recipe,
            task["version"],
            Path(task["out"]),
            data=task["data"],
            evaluation=task["evaluation"],
            seed=task["parameters"]["seed"],
            parameters=task["parameters"],
            target=Path(task["out"]) / task["name"],
        )
        return {"metrics": trained.metrics, "path": str(trained.path)}
    except BaseException as exc:  # the model's own code runs here: anything may go wrong
        return {"error": _one_line(exc)}


def evaluate_version(task: dict[str, Any]) -> dict[str, Any]:
    """Measure a SavedModel (a candidate trained elsewhere, or the champion) on the frozen set."""
    try:
        from scripts.training.evaluate import evaluate_savedmodel
        from scripts.training.recipes import recipe_of

        root = Path(task["root"])
        manifest = manifest_edit.load(root, task["model"])
        recipe = recipe_of(root, manifest, task["parameters"])
        metrics = evaluate_savedmodel(Path(task["path"]), manifest.serving.signature, recipe, task["evaluation"])
        return {"metrics": metrics}
    except BaseException as exc:
        return {"error": _one_line(exc)}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:ERROR_CHARS]


def _run(tasks: list[tuple[str, Any, dict[str, Any]]], jobs: int) -> dict[str, dict[str, Any]]:
    """Run `(key, function, task)` in `jobs` spawned processes; a dead worker fails only its task."""
    results: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(function, task): key for key, function, task in tasks}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as exc:  # BrokenProcessPool: the process died (OOM kill, os._exit, segfault)
                results[futures[future]] = {"error": _one_line(exc)}
    return results


# -- the champion -----------------------------------------------------------------------------------


def download_version(client: Any, store, manifest: ModelManifest, version: int, destination: Path) -> Path:
    """The committed files of `version`, each checked against the checksum list, whose digest is the manifest's."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = version_prefix(store.prefix, manifest.artifact.path, version)
    problem = check_version(client, store.bucket, prefix, manifest.versions[version].digest, store.integrity)
    if problem is not None:
        raise StoreError(f"{problem.key}: {problem.message}")
    try:
        checksums = client.get_object(Bucket=store.bucket, Key=prefix + CHECKSUMS_FILE)["Body"].read()
        entries, _ = parse_checksum_list(checksums)
        for relative, expected in entries.items():
            target = destination.joinpath(*relative.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=store.bucket, Key=prefix + relative)["Body"].read()
            if hashlib.sha256(body).hexdigest() != expected:
                raise StoreError(f"s3://{store.bucket}/{prefix}{relative}: content does not match the checksum list")
            target.write_bytes(body)
    except (ClientError, BotoCoreError) as exc:
        raise StoreError(f"s3://{store.bucket}/{prefix}: cannot download: {describe(exc)}") from None
    return destination


# -- the run ----------------------------------------------------------------------------------------


def candidate_space(manifest: ModelManifest, count: int | None) -> list[tuple[str, dict[str, Any]]]:
    space = manifest.training.candidates.expand()
    if count is not None and count > len(space):
        raise RetrainError(
            f"--candidates {count}: {MODELS_DIR}/{manifest.name}.yaml training.candidates defines {len(space)}"
        )
    chosen = space[: count or len(space)]
    return [(f"c{index}", parameters) for index, parameters in enumerate(chosen, start=1)]


def train_only(root: Path, model: str, environment: str, index: int, out: Path, client: Any = None) -> CandidateOutcome:
    """One candidate (1-based `index`) trained into `out`, its result beside it: a matrix job's share."""
    manifest, _, data, evaluation = _inputs(root, model, environment, client)
    name, parameters = candidate_space(manifest, None)[index - 1] if index >= 1 else (None, None)
    if name is None:
        raise RetrainError(f"--candidate-index {index}: candidates are numbered from 1")
    out.mkdir(parents=True, exist_ok=True)
    task = _training_task(root, manifest, name, parameters, data, evaluation, out)
    outcome = CandidateOutcome(name, parameters, **train_candidate(task))
    (out / f"{name}{RESULT_SUFFIX}").write_text(json.dumps(asdict(outcome), indent=2, sort_keys=True) + "\n")
    return outcome


def _training_task(root, manifest, name, parameters, data, evaluation, out) -> dict[str, Any]:
    return {
        "root": str(root),
        "model": manifest.name,
        "name": name,
        "parameters": parameters,
        "version": max(manifest.versions, default=0) + 1,
        "data": data,
        "evaluation": evaluation,
        "out": str(out),
    }


def _inputs(root: Path, model: str, environment: str, client: Any):
    from scripts.training.data_source import read_evaluation, read_training_data
    from scripts.training.recipes import entrypoint_file

    manifest = manifest_edit.load(root, model)
    entrypoint_file(root, manifest)  # no training section, or a file outside the root: stop here
    stacks = stacks_serving(root, environment)
    factory = (lambda: client) if client is not None else (lambda: s3_client(stacks[0].object_store))
    return manifest, stacks, read_training_data(root, manifest, factory), read_evaluation(root, manifest, factory)


def retrain(
    root: Path,
    model: str,
    environment: str,
    candidates: int | None = None,
    jobs: int = 1,
    work_dir: Path | None = None,
    report_dir: Path | None = None,
    trained: Path | None = None,
    client: Any = None,
) -> RetrainReport:
    """The whole run; the report is written whatever the decision (see the module docstring)."""
    if jobs < 1:
        raise RetrainError(f"--jobs {jobs}: at least 1")
    manifest, stacks, data, evaluation = _inputs(root, model, environment, client)
    rule = manifest.promotion
    work_dir = work_dir or root / "build" / "retrain" / model
    report_dir = report_dir or work_dir
    for directory in (work_dir, report_dir):
        directory.mkdir(parents=True, exist_ok=True)
    served = manifest.environments.get(environment)
    champion = ChampionOutcome(served.stable if served else None)
    if champion.version is not None:
        champion.recorded = manifest.versions[champion.version].metrics.get(rule.metric)

    tasks: list[tuple[str, Any, dict[str, Any]]] = []
    if trained is None:
        chosen = candidate_space(manifest, candidates)
        run_dir = work_dir / f"v{max(manifest.versions, default=0) + 1}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # a previous run's candidates; nothing of it was published from here
        run_dir.mkdir(parents=True)
        outcomes = [CandidateOutcome(name, parameters) for name, parameters in chosen]
        tasks += [
            (o.name, train_candidate, _training_task(root, manifest, o.name, o.parameters, data, evaluation, run_dir))
            for o in outcomes
        ]
    else:
        outcomes = _trained_elsewhere(trained)
        tasks += [
            (o.name, evaluate_version, _evaluation_task(root, model, o.parameters, Path(o.path), evaluation))
            for o in outcomes
            if o.error is None and o.path
        ]
    if champion.version is not None:
        try:
            path = download_version(
                client or s3_client(stacks[0].object_store),
                stacks[0].object_store,
                manifest,
                champion.version,
                work_dir / f"champion-v{champion.version}",
            )
            parameters = {"seed": 0}
            tasks.append(("champion", evaluate_version, _evaluation_task(root, model, parameters, path, evaluation)))
        except StoreError as exc:
            champion.error = str(exc)
    results = _run(tasks, jobs) if tasks else {}
    for outcome in outcomes:
        result = results.get(outcome.name, {})
        outcome.metrics = result.get("metrics", outcome.metrics)
        outcome.path = result.get("path", outcome.path)
        outcome.error = result.get("error", outcome.error)
    if "champion" in results:
        champion.metrics = results["champion"].get("metrics", {})
        champion.error = results["champion"].get("error")

    report = RetrainReport(
        model=model,
        environment=environment,
        metric=rule.metric,
        goal=rule.goal.value,
        min_delta=rule.min_delta,
        data={"source": data.source, "partition": data.partition, "files": [f.provenance() for f in data.files]},
        evaluation=evaluation.provenance(),
        candidates=outcomes,
        champion=champion,
        next_version=max(manifest.versions, default=0) + 1,
    )
    _decide(report)
    if report.winner is not None:
        _publish_and_promote(root, manifest, stacks, report, client)
    write_report(report, report_dir)
    return report


def _evaluation_task(root: Path, model: str, parameters, path: Path, evaluation) -> dict[str, Any]:
    return {"root": str(root), "model": model, "parameters": parameters, "path": str(path), "evaluation": evaluation}


def _trained_elsewhere(directory: Path) -> list[CandidateOutcome]:
    """Candidates a matrix of jobs trained (`--candidate-index`), from their result files."""
    outcomes = []
    for path in sorted(directory.rglob(f"*{RESULT_SUFFIX}")):
        try:
            recorded = json.loads(path.read_text())
            outcome = CandidateOutcome(recorded["name"], recorded["parameters"], error=recorded.get("error"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RetrainError(f"{path}: not a candidate result: {exc}") from None
        saved = path.parent / outcome.name
        outcome.path = str(saved) if saved.is_dir() else None
        if outcome.error is None and outcome.path is None:
            outcome.error = f"no SavedModel beside {path.name}"
        outcomes.append(outcome)
    if not outcomes:
        raise RetrainError(f"{directory}: no candidate results (*{RESULT_SUFFIX})")
    return outcomes


def _finite(metrics: dict[str, float]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in metrics.values())


def _decide(report: RetrainReport) -> None:
    """Exclude what cannot compete, pick the best, and gate it against the re-measured champion."""
    metric = report.metric
    for outcome in report.candidates:
        if outcome.error:
            outcome.excluded = f"crashed: {outcome.error}"
        elif metric not in outcome.metrics:
            outcome.excluded = f"no {metric!r} metric (it has {', '.join(sorted(outcome.metrics)) or 'none'})"
        elif not _finite(outcome.metrics):
            outcome.excluded = "a metric is not finite (NaN or infinite): the training diverged"
    eligible = [o for o in report.candidates if o.excluded is None]
    if not eligible:
        report.reasons.append("no candidate finished with finite metrics")
        return
    maximize = report.goal == Goal.maximize.value
    best = sorted(eligible, key=lambda o: (-o.metrics[metric] if maximize else o.metrics[metric], o.name))[0]
    champion = report.champion
    measured = champion.error is None and metric in champion.metrics and _finite(champion.metrics)
    if champion.version is not None and not measured:
        why = champion.error or f"no finite {metric!r} metric"
        report.reasons.append(
            f"the champion v{champion.version} could not be measured on the evaluation set ({why}); "
            "a candidate is promoted only when it beats the champion on the same set"
        )
        return
    comparison = gate(report, best)
    if not comparison.passed:
        report.reasons.append(
            f"the best candidate {best.name} does not beat the champion by more than {report.min_delta:g}"
        )
        report.reasons.append(comparison.describe().replace("\n", "; "))
        return
    report.winner = best.name
    report.reasons.append(comparison.describe().replace("\n", "; "))


def gate(report: RetrainReport, best: CandidateOutcome) -> Comparison:
    champion = report.champion
    return Comparison(
        report.metric,
        Goal(report.goal),
        report.min_delta,
        champion.version,
        champion.metrics.get(report.metric) if champion.version is not None else None,
        report.version or report.next_version,
        best.metrics[report.metric],
    )


def _publish_and_promote(root: Path, manifest: ModelManifest, stacks, report: RetrainReport, client: Any) -> None:
    from scripts.modelctl.publish import Publisher, publish_model
    from scripts.training.savedmodel import SavedModelError

    winner = next(o for o in report.candidates if o.name == report.winner)
    version = max(manifest.versions, default=0) + 1
    report.version = version
    try:
        # publish_model first loads the winner and runs the example request through it (and
        # writes the warmup file from it); a failure there stops before anything is uploaded.
        publish_model(root, manifest.name, Path(winner.path), stacks[0].stack, version, progress=False, client=client)
    except SavedModelError as exc:
        report.winner, report.version = None, None
        report.reasons.append(f"the winner {winner.name} failed the serving check, nothing was published: {exc}")
        return
    published_to = {_store_key(stacks[0].object_store)}
    updated = manifest_edit.load(root, manifest.name)
    for stack in stacks[1:]:
        if _store_key(stack.object_store) not in published_to:
            Publisher(stack.object_store, updated, client).publish(Path(winner.path), version, progress=False)
            published_to.add(_store_key(stack.object_store))
    training = manifest.training
    served = manifest.environments.get(report.environment)
    canary = training.promote_as is PromoteAs.canary and served is not None and not any(s.flagger for s in stacks)
    try:
        promote(
            root,
            manifest.name,
            report.environment,
            version,
            canary=canary,
            client=client,
            weight=training.canary_weight,
            gate=gate(report, winner),
        )
    except PromotionError as exc:
        report.reasons.append(f"published as version {version}, but not promoted: {exc}")
        return
    report.decision = "promoted"
    report.promoted_as = "canary" if canary else "stable"


def _store_key(store) -> tuple:
    return (store.endpoint, store.bucket, store.prefix)


# -- the report -------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if math.isfinite(value) else "NaN"


def report_json(report: RetrainReport) -> dict[str, Any]:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON has no NaN; `excluded` says why
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    document = asdict(report)
    for candidate in document["candidates"]:
        candidate.pop("path", None)  # a path on the machine that ran it
    return clean(document)


def render_markdown(report: RetrainReport) -> str:
    """The report as markdown (the retrain pull request's body). Names, parameters, metrics,
    reasons and data locations come from the manifest, the data store or training errors, so each
    goes through `sinks` as text, table cell or code span: none can change the report's structure."""
    code, cell, text = sinks.md_code, sinks.md_cell, sinks.md_text
    direction = "higher" if report.goal == Goal.maximize.value else "lower"
    verdict = (
        f"**Promoted**: candidate {text(report.winner)} published as version {report.version}, "
        f"{text(report.promoted_as)} in {code(report.environment)}."
        if report.promoted
        else "**No new version**: nothing was published."
    )
    lines = [
        f"## Retrain {text(report.model)} for {code(report.environment)}",
        "",
        verdict,
        "",
        f"Rule: {code(report.metric)}, {direction} is better, by more than {report.min_delta:g} "
        "(`promotion` in the manifest). Every model below is measured on the same frozen evaluation set.",
        "",
        f"| model | parameters | {cell(report.metric)} | status |",
        "| --- | --- | --- | --- |",
    ]
    champion = report.champion
    if champion.version is not None:
        status = champion.error or f"recorded {_number(champion.recorded)} (not reused)"
        lines.append(
            f"| champion v{champion.version} | – | {cell(_number(champion.metrics.get(report.metric)))} "
            f"| {cell(status)} |"
        )
    for outcome in report.candidates:
        parameters = ", ".join(f"{k}={v}" for k, v in outcome.parameters.items())
        status = outcome.excluded or ("winner" if outcome.name == report.winner else "eligible")
        lines.append(
            f"| {cell(outcome.name)} | {cell(parameters)} | {cell(_number(outcome.metrics.get(report.metric)))} "
            f"| {cell(status)} |"
        )
    lines += ["", "Decision:", ""] + [f"- {text(reason)}" for reason in report.reasons]
    data = report.data
    lines += ["", "Data:", ""]
    partition = f" (partition {code(data['partition'])})" if data.get("partition") else ""
    lines.append(f"- training: {code(data['source'])}{partition}")
    for entry in data["files"]:
        identity = ", ".join(f"{k} {code(entry[k])}" for k in ("etag", "version_id") if k in entry)
        lines.append(
            f"  - {code(entry['uri'])} sha256 {code(entry['sha256'][:12] + '…')}"
            + (f", {identity}" if identity else "")
        )
    lines.append(
        f"- evaluation: {code(report.evaluation['uri'])} sha256 {code(report.evaluation['sha256'][:12] + '…')} (frozen)"
    )
    return "\n".join(lines) + "\n"


def pull_request_body(report: RetrainReport) -> str:
    """The retrain pull request's description: what merging does, then the report."""
    head = [
        f"Scheduled retraining of **{sinks.md_text(report.model)}** published version {report.version} and "
        f"serves it as {sinks.md_text(report.promoted_as)} in {sinks.md_code(report.environment)} once this "
        "is merged.",
        "",
        "Merging runs the usual plan and approvals (the plan comment follows); closing it serves "
        "nothing new (the version stays published, unreferenced).",
        "",
    ]
    return "\n".join(head) + render_markdown(report)


def write_report(report: RetrainReport, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / REPORT_JSON).write_text(json.dumps(report_json(report), indent=2, sort_keys=True) + "\n")
    (directory / REPORT_MARKDOWN).write_text(render_markdown(report))
    if report.promoted:
        (directory / PR_BODY).write_text(pull_request_body(report))
    else:
        (directory / PR_BODY).unlink(missing_ok=True)
