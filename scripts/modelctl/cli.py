"""Command line of `modelctl`: a thin layer that parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from infra.platform.object_store import StoreError
from infra.spec.errors import ConfigError, ErrorItem
from infra.spec.validators import stack_name_problem, version_problem
from scripts.modelctl import sinks
from scripts.modelctl.catalog import CatalogError
from scripts.modelctl.comment import COMMENT_BUDGET, GITHUB_COMMENT_LIMIT
from scripts.modelctl.promote import PromotionError
from scripts.modelctl.render import RenderError
from scripts.modelctl.report import DIFF_BUDGET
from scripts.modelctl.retrain import RetrainError
from scripts.modelctl.snapshot import RevisionError
from scripts.training.data_source import DataError
from scripts.training.recipes import RecipeError
from scripts.training.savedmodel import SavedModelError
from scripts.training.train import TrainingError

if TYPE_CHECKING:
    from infra.offline import OfflineRun
    from scripts.modelctl.plancache import PlanCache
    from scripts.modelctl.policy_worker import PolicyWorker
    from scripts.modelctl.scope import Scope

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # `plan --detailed-exitcode`, as `pulumi preview --expect-no-changes` users expect


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad argument; every error of this tool exits 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _print_errors(errors: Sequence[ErrorItem]) -> None:
    for item in errors:
        print(str(item), file=sys.stderr)
    print(f"{len(errors)} error(s)", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from infra.spec.manifest import load_manifests
    from infra.spec.project import validate_project
    from scripts.modelctl.contract import example_request_errors

    settings, errors = validate_project(args.root)
    if not errors:
        # Each example request against the recorded contract of every version it is sent to.
        errors = [e for m in load_manifests(args.root) for e in example_request_errors(m)]
    if errors:
        _print_errors(errors)
        return EXIT_ERROR
    print(f"ok: {len(settings)} stack(s) and every manifest under {args.root / 'models'} are valid")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from infra.spec.manifest import manifest_json_schema

    text = json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from infra.spec.manifest import keep_documents_in
    from infra.spec.project import validate_project
    from infra.spec.settings import stack_names
    from scripts.modelctl.plancache import ManifestDocuments, PlanCache, default_directory
    from scripts.modelctl.render import render
    from scripts.modelctl.report import build_report, plan_scope, render_json, render_markdown, render_text

    stacks = stack_names(args.root) if args.all_stacks else list(dict.fromkeys(args.stack or []))
    if not stacks:
        print("modelctl plan: name a --stack or use --all-stacks", file=sys.stderr)
        return EXIT_ERROR
    for option, value in (("--max-diff-chars", args.max_diff_chars), ("--max-chars", args.max_chars)):
        if value < 0:
            print(f"modelctl plan: {option} takes 0 (no limit) or a positive number", file=sys.stderr)
            return EXIT_ERROR
    if args.no_cache and args.prune_cache:
        print("modelctl plan: --prune-cache needs the cache; drop --no-cache", file=sys.stderr)
        return EXIT_ERROR
    cache = None if args.no_cache else PlanCache(args.cache_dir or default_directory(args.root))
    # Each manifest content is parsed once across plans (validated on every read still).
    keep_documents_in(ManifestDocuments(cache) if cache is not None else None)
    _, errors = validate_project(args.root)
    if errors:
        _print_errors(errors)
        return EXIT_ERROR
    scope = plan_scope(args.root, args.base, allow_incremental=not args.full)
    worker = policy_worker(args, stacks, scope, cache)
    try:
        report = build_report(args.root, stacks, args.base, cache=cache, scope=scope, jobs=args.jobs)
        checked = worker.result() if worker is not None else None
    finally:
        if worker is not None:
            worker.close()
    if args.prune_cache and cache is not None:
        kept, removed = cache.prune()
        print(f"plan cache {cache.directory}: kept {kept} entries, removed {removed}", file=sys.stderr)
    # The mandatory rules (engine emulation included) always apply: what they refuse, a
    # real `pulumi up` or the engines behind it would refuse or get wrong.
    if not apply_policies(args.root, report.head_runs, show_advisory=args.policy, checked=checked):
        return EXIT_ERROR
    if not check_contracts(report.contracts):
        return EXIT_ERROR
    if args.check_artifacts:
        problems = check_artifacts(args.root, stacks)
        if problems:
            _print_errors(problems)
            return EXIT_ERROR
    if args.format == "json":
        print(json.dumps(render_json(report), indent=2, sort_keys=False))
    elif args.format == "markdown":
        sys.stdout.write(
            render_markdown(
                report,
                diff_budget=args.max_diff_chars,
                budget=args.max_chars,
                full_plan=args.full_plan_note,
                full_plan_url=args.full_plan_url,
            )
        )
    else:
        sys.stdout.write(render_text(report))
    if args.render:
        for stack in stacks:
            directory = args.render if len(stacks) == 1 else args.render / stack
            files = render(report.head_runs[stack], directory)
            print(f"Rendered {len(files)} Kubernetes objects of {stack} to {directory}/", file=sys.stderr)
    if args.detailed_exitcode and report.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def policy_worker(
    args: argparse.Namespace, stacks: list[str], scope: Scope, cache: PlanCache | None
) -> PolicyWorker | None:
    """With --jobs 2, an incremental plan with a cache and several stacks: a forked process that
    checks every other stack's policies while this one plans (scripts/modelctl/policy_worker.py);
    else None."""
    from scripts.modelctl import incremental
    from scripts.modelctl.policy_worker import PolicyWorker

    if args.jobs < 2 or len(stacks) < 2 or cache is None or not scope.incremental or not hasattr(os, "fork"):
        return None
    # Only on a warm cache (the plan that stored the base side stored every model): on a cold
    # one the worker would declare its stacks' whole fleet again, doubling time and memory.
    assert scope.base is not None
    store = incremental.PieceStore(cache, scope.base.program_digest())
    if store.get_skeleton(stacks[0], scope.base.manifests()) is None:
        return None

    def check_stacks(delegated: Sequence[str]) -> dict[str, list[tuple[str, str]]]:  # runs in the worker
        runs = incremental.head_side(args.root, delegated, scope, cache)
        return {stack: policy_verdicts(args.root, stack, runs[stack]) for stack in delegated}

    return PolicyWorker(stacks[1::2], check_stacks)


def policy_verdicts(root: Path, stack: str, run: OfflineRun) -> list[tuple[str, str]]:
    """(enforcement, violation) of every rule of the policy pack over one stack's resources."""
    from scripts.modelctl.guardrails import check, stack_policy_settings

    return [(violation.enforcement, str(violation)) for violation in check(run, stack_policy_settings(root, stack))]


def apply_policies(root: Path, runs: dict, show_advisory: bool = False, checked: dict | None = None) -> bool:
    """The policy pack's rules over each stack's resources; False on a mandatory violation,
    each printed with the rule, the resource and the fix. `checked`: stacks whose verdicts the
    policy worker computed (the others are checked here), printed in the same order."""
    from scripts.modelctl.guardrails import MANDATORY

    passed = True
    for stack, run in runs.items():
        verdicts = checked[stack] if checked and stack in checked else policy_verdicts(root, stack, run)
        for enforcement, violation in verdicts:
            if enforcement == MANDATORY or show_advisory:
                print(f"policy: stack {stack}: {violation}", file=sys.stderr)
            passed = passed and enforcement != MANDATORY
    return passed


def check_contracts(reviews: dict) -> bool:
    """The rule contract-compatibility over the plan's contract reviews (scripts/modelctl/contract.py
    says why it cannot run in the Pulumi policy pack); False when a production stack would serve
    an unacknowledged breaking change."""
    passed = True
    for stack, found in reviews.items():
        for review in found:
            if review.refused:
                print(f"policy: stack {stack}: {review.violation()}", file=sys.stderr)
                passed = False
    return passed


def cmd_contract(args: argparse.Namespace) -> int:
    from infra.spec.manifest import load_manifests
    from infra.spec.settings import load_stack_settings, stack_names
    from scripts.modelctl import manifest_edit
    from scripts.modelctl.contract import openapi_document
    from scripts.modelctl.shelf import stack_servers

    manifest = manifest_edit.load(args.root, args.model)
    if not manifest.versions:
        raise ConfigError.single(
            f"models/{args.model}.yaml", "versions", "no published version yet: `modelctl publish` one first"
        )
    version = args.version if args.version is not None else max(manifest.versions)
    if version not in manifest.versions:
        published = ", ".join(str(v) for v in sorted(manifest.versions))
        raise ConfigError.single(
            f"models/{args.model}.yaml", "versions", f"--version {version} is not published; published: {published}"
        )
    load_manifests(args.root)  # the whole project must be valid, as for every other command
    stacks = {stack: load_stack_settings(args.root, stack) for stack in stack_names(args.root)}
    servers = stack_servers(manifest, stacks)
    text = json.dumps(openapi_document(manifest, version, servers), indent=2) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote the OpenAPI document of {args.model} version {version} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_policy_config(args: argparse.Namespace) -> int:
    from scripts.modelctl.guardrails import policy_config, stack_policy_settings

    print(json.dumps(policy_config(stack_policy_settings(args.root, args.stack)), indent=2, sort_keys=True))
    return EXIT_OK


def check_artifacts(root: Path, stacks: Sequence[str]) -> list[ErrorItem]:
    """Every version each stack serves, against that stack's object store."""
    from infra.model.artifacts import verify_served_versions
    from infra.spec.manifest import load_manifests, served_in
    from infra.spec.settings import load_stack_settings

    manifests = load_manifests(root)
    problems = []
    for stack in stacks:
        settings = load_stack_settings(root, stack)
        problems += verify_served_versions(
            served_in(manifests, settings.environment),
            settings.object_store,
            warn=lambda message, stack=stack: print(f"warning: stack {stack}: {message}", file=sys.stderr),
        )
    return problems


def cmd_train(args: argparse.Namespace) -> int:
    from scripts.modelctl import manifest_edit
    from scripts.training.data_source import read_training_data
    from scripts.training.recipes import entrypoint_file, recipe_of

    manifest = manifest_edit.load(args.root, args.model)
    entrypoint_file(args.root, manifest)  # refuses a model without a training section, before TensorFlow
    require_training_tools("train")
    from scripts.training.train import train

    recipe = recipe_of(args.root, manifest, {"seed": args.version})
    data = read_training_data(args.root, manifest, _store_client(args.root, args.stack) if args.stack else None)
    trained = train(manifest, recipe, args.version, args.out, data=data)
    metrics = ", ".join(f"{k} {v:g}" for k, v in sorted(trained.metrics.items()))
    print(f"trained {args.model} version {args.version}: {metrics} (held-out split) -> {trained.path}")
    return EXIT_OK


def _store_client(root: Path, stack: str):
    """A factory of the S3 client of `stack`'s object store (data sources live there)."""
    from infra.platform.object_store import s3_client
    from infra.spec.settings import load_stack_settings

    store = load_stack_settings(root, stack).object_store
    return lambda: s3_client(store)


# The requirement file that installs TensorFlow and the training tools (the Pulumi program's
# requirements.txt does not: `pulumi install` builds it for every preview and up).
TRAINING_REQUIREMENTS = "requirements-training.txt"


def require_training_tools(command: str) -> None:
    """Fail with the file to install when TensorFlow is missing, before any work."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise MissingToolsError(
            f"`modelctl {command}` needs TensorFlow, which is not installed: "
            f"pip install -r {TRAINING_REQUIREMENTS} (or `make install`)"
        )


class MissingToolsError(Exception):
    """A command needs packages that are not installed; the message names the requirement file."""


def cmd_publish(args: argparse.Namespace) -> int:
    require_training_tools("publish")
    from scripts.modelctl.publish import publish_model

    published = publish_model(
        args.root, args.model, args.savedmodel, args.stack, args.version, args.takeover, progress=not args.quiet
    )
    if published.already_committed:  # an earlier run committed it and lost the reply, or died before recording it
        done = f"{args.model} version {published.version} was already committed with this content; verified"
    else:
        done = f"published {args.model} version {published.version}: {published.files} files, {published.bytes} bytes"
    print(f"{done} -> {published.url} ({published.digest}); recorded in models/{args.model}.yaml")
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    require_training_tools("retrain")
    from scripts.modelctl.retrain import EXIT_NO_WINNER, REPORT_MARKDOWN, retrain, train_only

    if args.candidate_index is not None:
        outcome = train_only(args.root, args.model, args.env, args.candidate_index, args.work_dir or Path("build"))
        print(f"candidate {outcome.name}: {outcome.error or outcome.metrics}")
        return EXIT_ERROR if outcome.error else EXIT_OK
    report = retrain(
        args.root,
        args.model,
        args.env,
        candidates=args.candidates,
        jobs=args.jobs,
        work_dir=args.work_dir,
        report_dir=args.report_dir,
        trained=args.trained,
    )
    report_dir = args.report_dir or args.work_dir or args.root / "build" / "retrain" / args.model
    sys.stdout.write(f"{(report_dir / REPORT_MARKDOWN).read_text()}\nreport: {report_dir}/\n")
    return EXIT_OK if report.promoted else EXIT_NO_WINNER


def cmd_promote(args: argparse.Namespace) -> int:
    from scripts.modelctl.promote import promote

    comparison = promote(
        args.root,
        args.model,
        args.env,
        args.version,
        args.canary,
        weight=args.weight,
        require_shadow=args.require_shadow,
        prometheus=args.prometheus,
        report=print,
    )
    label = "canary" if args.canary else "stable"
    print(comparison.describe())
    print(f"promoted {args.model} version {comparison.candidate} to {label} in {args.env} (models/{args.model}.yaml)")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from scripts.modelctl.promote import rollback

    current, previous = rollback(args.root, args.model, args.env)
    print(f"rolled {args.model} back in {args.env}: stable {current} -> {previous} (models/{args.model}.yaml)")
    return EXIT_OK


def cmd_smoke(args: argparse.Namespace) -> int:
    from infra.model.routing import grpc_target
    from infra.spec.manifest import load_manifests, served_in
    from infra.spec.settings import load_stack_settings
    from scripts.modelctl.smoke import grpc_predict, smoke_model

    settings = load_stack_settings(args.root, args.stack)
    base_url = args.base_url or f"https://{settings.routing.host}"
    models = served_in(load_manifests(args.root), settings.environment)
    if any(model.serves_grpc for model in models):
        # gRPC requests are TensorFlow tensor protos sent through tensorflow-serving-api's stubs.
        require_training_tools("smoke (gRPC)")
    if settings.flagger and not args.no_wait and not _await_flagger(args, settings, [m.name for m in models]):
        return EXIT_ERROR
    checks = []
    for model in models:
        checks += smoke_model(model, base_url, args.timeout)
        if model.serves_grpc:
            target = args.grpc_target or grpc_target(model.name, settings)
            checks.append(grpc_predict(model, target, args.timeout, plaintext=args.grpc_plaintext))
    for check in checks:
        print(sinks.terminal(check))
    failed = [c for c in checks if not c.ok]
    print(f"{len(models)} models at {base_url}: {len(checks) - len(failed)} checks passed, {len(failed)} failed")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from infra.spec.manifest import served_in
    from scripts.modelctl.shelf import StatusReport, live_status, load_shelf, render_json, render_text

    if (args.live or args.base_url) and not args.stack:
        print("modelctl status: --live needs a --stack (whose host to ask)", file=sys.stderr)
        return EXIT_ERROR
    if args.base_url and not args.live:
        print("modelctl status: --base-url goes with --live", file=sys.stderr)
        return EXIT_ERROR
    shelf = load_shelf(args.root, args.stack, with_costs=True)
    report = StatusReport(shelf, args.stack)
    if args.live:
        settings = shelf.stacks[args.stack]
        # As `modelctl smoke`: through the stack's route, over TLS unless --base-url says otherwise.
        base_url = args.base_url or f"https://{settings.routing.host}"
        served = served_in((m.manifest for m in shelf.models), settings.environment)
        found = live_status(served, base_url, args.timeout)
        report = StatusReport(shelf, args.stack, base_url, {status.model: status for status in found})
    if args.format == "json":
        print(json.dumps(render_json(report), indent=2))
    else:
        sys.stdout.write(render_text(report))
    return EXIT_ERROR if report.differs else EXIT_OK


def cmd_catalog(args: argparse.Namespace) -> int:
    from scripts.modelctl.catalog import CatalogOptions, write_catalog

    options = CatalogOptions(grafana_url=args.grafana_url, repo_url=args.repo_url, stack=args.stack, branch=args.branch)
    site = write_catalog(args.root, args.out, options)
    print(f"wrote the catalog of {site.models} model(s) to {args.out}/ (open {args.out / 'index.html'})")
    for note in site.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def _await_flagger(args: argparse.Namespace, settings, models: list[str]) -> bool:
    """On a Flagger stack `pulumi up` returns before Flagger has promoted: wait for its verdict."""
    from scripts.modelctl.rollout import ClusterReader, Outcome, RolloutError, wait_for_rollouts

    target = settings.kubernetes
    print(f"waiting up to {args.rollout_timeout:g} s for Flagger's verdict on {len(models)} model(s)")
    try:
        reader = ClusterReader(
            settings.namespace, context=target and target.context, kubeconfig=target and target.kubeconfig
        )
        verdicts = wait_for_rollouts(
            models,
            reader,
            timeout=args.rollout_timeout,
            poll_interval=args.poll_interval,
            report=lambda verdict: print(sinks.terminal(f"rollout {verdict}"), flush=True),
        )
    except RolloutError as exc:
        print(f"modelctl smoke: {exc}", file=sys.stderr)
        return False
    unsettled = [v for v in verdicts if v.outcome is not Outcome.promoted]
    for verdict in unsettled:
        if verdict.outcome is Outcome.failed:
            print(sinks.terminal(f"modelctl smoke: {verdict.model}: rollout failed: {verdict.detail}"), file=sys.stderr)
        else:
            print(
                sinks.terminal(
                    f"modelctl smoke: {verdict.model}: no verdict from Flagger within {args.rollout_timeout:g} s "
                    f"(last phase: {verdict.phase or 'none'}; {verdict.detail})"
                ),
                file=sys.stderr,
            )
    return not unsettled


def cmd_codeowners(args: argparse.Namespace) -> int:
    from infra.spec.manifest import load_manifests

    sys.stdout.write(codeowners(load_manifests(args.root)))
    return EXIT_OK


def codeowners(manifests) -> str:
    """`.github/CODEOWNERS`: each manifest's owner must approve changes to it."""
    lines = [
        "# Generated by `modelctl codeowners` from each manifest's `owner`; `make codeowners` refreshes it.",
        "# With branch protection requiring code-owner review, a version bump needs its owner's approval.",
    ]
    lines += [f"/models/{m.name}.yaml {m.owner}" for m in manifests]
    return "\n".join(lines) + "\n"


def _whole_number_from_one(below_one: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least 1; `below_one` says why smaller is refused."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value}: {below_one}")
        return value

    return parse


_count = _whole_number_from_one("at least 1")


def _version(text: str) -> int:
    """An argparse type: a version number TF-Serving can hold (infra/spec/validators.py)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    problem = version_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def _stack(text: str) -> str:
    """An argparse type: a stack name (never one that reads as an option, e.g. `--stack=--output`)."""
    problem = stack_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: seconds are a finite number, 0 or more")
    return value


def _http_url(text: str) -> str:
    """An argparse type: an http(s) URL (a Prometheus address)."""
    from infra.spec.settings import HTTP_URL_PATTERN

    if not re.fullmatch(HTTP_URL_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _percent(text: str) -> int:
    value = _count(text)
    if value > 99:
        raise argparse.ArgumentTypeError(f"{value}: a canary's weight is 1 to 99")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelctl", description="Operate the model-serving stack.")
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="project root holding models/ and stacks/ (default: .)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = commands.add_parser("validate", help="check every manifest and stack file")
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="print the manifest JSON Schema")
    schema.add_argument("--output", type=Path, help="write to this file instead of stdout")
    schema.set_defaults(func=cmd_schema)

    plan = commands.add_parser("plan", help="run the program offline under Pulumi's mocks and diff it")
    which = plan.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--stack", type=_stack, action="append", help="stack name (stacks/Pulumi.<stack>.yaml); repeatable"
    )
    which.add_argument("--all-stacks", action="store_true", help="every stack under stacks/")
    plan.add_argument("--base", metavar="REF", help="git revision to diff against (its own program and manifests)")
    plan.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    plan.add_argument("--render", type=Path, metavar="DIR", help="write each Kubernetes object as YAML under DIR")
    plan.add_argument(
        "--max-diff-chars",
        type=int,
        default=DIFF_BUDGET,
        metavar="N",
        help=f"markdown: YAML diffs up to N characters (default {DIFF_BUDGET}; 0: as many as --max-chars leaves room)",
    )
    plan.add_argument(
        "--max-chars",
        type=int,
        default=COMMENT_BUDGET,
        metavar="N",
        help=f"markdown: the whole comment up to N characters (default {COMMENT_BUDGET}, under GitHub's "
        f"{GITHUB_COMMENT_LIMIT} limit; 0: no limit); diffs, then contract reviews, then tables are cut first",
    )
    plan.add_argument(
        "--full-plan-note",
        metavar="TEXT",
        help="markdown: where the full plan is, said when something is cut (e.g. the workflow run's artifact "
        "and job summary); shown as plain text",
    )
    plan.add_argument(
        "--full-plan-url",
        metavar="URL",
        help="markdown: a link (http or https) to the full plan, said with --full-plan-note when something is cut, "
        "e.g. the workflow run's page",
    )
    plan.add_argument(
        "--detailed-exitcode", action="store_true", help="exit 0 when nothing changes, 2 on changes, 1 on error"
    )
    plan.add_argument(
        "--full",
        action="store_true",
        help="with --base: plan every model even when the change can reach only some (the incremental plan's "
        "result is the same; the output says which mode ran and why)",
    )
    plan.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where models' resources and base runs are kept between plans "
        "(default: $MODELCTL_PLAN_CACHE, else build/.plan-cache under --root)",
    )
    plan.add_argument("--no-cache", action="store_true", help="neither read nor write the plan cache")
    plan.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2 if (os.cpu_count() or 1) > 1 else 1,
        help="2: an incremental plan with a cache checks every other stack's policies in a second process, "
        "and declares every other stack the cache lacks there (the output is the same); default 2 when there "
        "are several CPUs",
    )
    plan.add_argument(
        "--prune-cache",
        action="store_true",
        help="after the plan, delete the cache entries it neither read nor wrote (the default branch's CI job "
        "keeps the cache at one fleet's size this way)",
    )
    plan.add_argument(
        "--check-artifacts",
        action="store_true",
        help="also check that every served version is committed in the stack's store with its digest",
    )
    plan.add_argument(
        "--policy",
        action="store_true",
        help="also print advisory policy findings (the mandatory rules always apply; a violation exits 1)",
    )
    plan.set_defaults(func=cmd_plan)

    contract = commands.add_parser(
        "contract",
        help="print the OpenAPI 3.1 document of a model version's TF-Serving REST API",
        description=(
            "Print the OpenAPI 3.1 document of one version's TF-Serving REST API: predict by version\n"
            "and by label, status and metadata, with request and response schemas (row `instances`\n"
            "and columnar `inputs` forms) from the contract `modelctl publish` recorded."
        ),
        epilog=(
            "exit codes:\n"
            "  0  printed\n"
            "  1  no such model or version, no contract recorded for it, or an invalid project\n"
            "\n"
            "example:\n"
            "  modelctl contract iris --version 3 > iris-3.openapi.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    contract.add_argument("model")
    contract.add_argument("--version", type=_version, help="default: the newest published")
    contract.add_argument("--output", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    contract.set_defaults(func=cmd_contract)

    policy = commands.add_parser("policy-config", help="print a stack's --policy-pack-config JSON")
    policy.add_argument("--stack", type=_stack, required=True)
    policy.set_defaults(func=cmd_policy_config)

    train = commands.add_parser(
        "train", help="train a model by its manifest's training entrypoint and export a SavedModel"
    )
    train.add_argument("model")
    train.add_argument("--version", type=_version, required=True)
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/<model>/<version>/")
    train.add_argument("--stack", type=_stack, help="whose object store holds training.data when it is an s3:// prefix")
    train.set_defaults(func=cmd_train)

    publish = commands.add_parser("publish", help="publish a SavedModel as an immutable version")
    publish.add_argument("model")
    publish.add_argument("savedmodel", type=Path, metavar="SAVEDMODEL_DIR")
    publish.add_argument("--stack", type=_stack, required=True, help="whose object store (stacks/Pulumi.<stack>.yaml)")
    publish.add_argument("--version", type=_version, help="default: the next after the newest published")
    publish.add_argument("--takeover", action="store_true", help="replace the claim of an interrupted publish")
    publish.add_argument("--quiet", action="store_true", help="no progress bar")
    publish.set_defaults(func=cmd_publish)

    retrain = commands.add_parser(
        "retrain",
        help="train candidates on the newest data; publish and promote one only if it beats the champion",
        description=(
            "Train the candidates of the manifest's training.candidates in parallel on the newest data,\n"
            "measure each and the environment's champion (downloaded from the store) on the frozen\n"
            "evaluation set, apply the promotion rule, and publish and promote a winner that loads and\n"
            "answers the example request. Writes report.json, report.md (and pr-body.md on a promotion)."
        ),
        epilog=(
            "exit codes:\n"
            "  0  a winner was published and promoted (the manifest changed)\n"
            "  1  bad input or an error (nothing promoted)\n"
            "  3  no winner: nothing was published; the report says why\n"
            "\n"
            "example:\n"
            "  modelctl retrain taxi-fare --env staging --candidates 4 --jobs 2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retrain.add_argument("model")
    retrain.add_argument("--env", required=True, help="environment whose champion to beat and whose store to use")
    retrain.add_argument("--candidates", type=_count, help="train the first N of the candidate space (default: all)")
    retrain.add_argument("--jobs", type=_count, default=1, help="parallel training processes (default 1)")
    retrain.add_argument("--work-dir", type=Path, metavar="DIR", help="default: build/retrain/<model>")
    retrain.add_argument("--report-dir", type=Path, metavar="DIR", help="default: the work directory")
    retrain.add_argument(
        "--candidate-index",
        type=_count,
        metavar="K",
        help="train only candidate K into --work-dir and stop (a CI matrix job's share)",
    )
    retrain.add_argument(
        "--trained", type=Path, metavar="DIR", help="evaluate candidates trained by --candidate-index jobs under DIR"
    )
    retrain.set_defaults(func=cmd_retrain)

    promote = commands.add_parser(
        "promote",
        help="serve a version if it beats the champion",
        description=(
            "Serve a version in an environment (an edit of models/<model>.yaml) if it beats the stable\n"
            "version on the promotion rule's metric. With --require-shadow, the version is the\n"
            "environment's shadow, and its shadow verdict (minutes served, mirrored calls, error ratio\n"
            "and p95 latency against the stable's, thresholds in environments.<env>.shadow.verdict)\n"
            "must hold in every stack serving the environment, read from Prometheus."
        ),
        epilog=(
            "exit codes:\n"
            "  0  promoted (the manifest changed)\n"
            "  1  refused (the gate or the shadow verdict), Prometheus unreachable, or bad input\n"
            "\n"
            "example:\n"
            "  modelctl promote iris --env dev --require-shadow --prometheus http://localhost:9090"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    promote.add_argument("model")
    promote.add_argument("--env", required=True, help="environment (a stack's `environment`)")
    promote.add_argument("--version", type=_version, help="default: the newest published")
    promote.add_argument("--canary", action="store_true", help="serve it as the canary instead of stable")
    promote.add_argument(
        "--weight", type=_percent, default=10, help="with --canary: its share of the traffic, %% (default 10)"
    )
    promote.add_argument(
        "--require-shadow",
        action="store_true",
        help="promote the environment's shadow version only if its shadow verdict holds too, read from "
        "Prometheus (docs/shadow.md)",
    )
    promote.add_argument(
        "--prometheus",
        metavar="URL",
        type=_http_url,
        help="with --require-shadow: the Prometheus to ask (default: the stack's monitoring.prometheusAddress)",
    )
    promote.set_defaults(func=cmd_promote)

    from scripts.modelctl.rollout import POLL_INTERVAL_SECONDS, ROLLOUT_TIMEOUT_SECONDS

    smoke = commands.add_parser(
        "smoke",
        help="call every model's REST status and one predict (after Flagger's verdict on Flagger stacks)",
        description=(
            "Call every model's REST status and one predict with its example request, and one gRPC\n"
            "Predict for models that expose gRPC (serving.protocols). On a stack with\n"
            "progressive delivery (Flagger), first wait until Flagger has promoted each model's new\n"
            "revision, reading the cluster of the stack's kubernetes.context (or KUBECONFIG)."
        ),
        epilog=(
            "exit codes:\n"
            "  0  every check passed (on a Flagger stack, after Flagger promoted every model)\n"
            "  1  a check failed, Flagger's analysis failed (it rolled back), no verdict within\n"
            "     --rollout-timeout, the cluster could not be read, or bad input\n"
            "\n"
            "example:\n"
            "  modelctl smoke --stack prod --rollout-timeout 1800"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    smoke.add_argument("--stack", type=_stack, required=True)
    smoke.add_argument("--base-url", help="default: https://<the stack's host>")
    smoke.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    smoke.add_argument(
        "--grpc-target",
        metavar="HOST:PORT",
        help="where gRPC calls go (default: <model>.grpc.<the stack's host>:443, over TLS)",
    )
    smoke.add_argument("--grpc-plaintext", action="store_true", help="gRPC without TLS (a port-forward, a test)")
    smoke.add_argument(
        "--rollout-timeout",
        type=_seconds,
        default=ROLLOUT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"Flagger stacks: how long to wait for the verdicts (default {ROLLOUT_TIMEOUT_SECONDS})",
    )
    smoke.add_argument(
        "--poll-interval",
        type=_seconds,
        default=POLL_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"Flagger stacks: seconds between reads of the Canaries (default {POLL_INTERVAL_SECONDS})",
    )
    smoke.add_argument("--no-wait", action="store_true", help="Flagger stacks: smoke at once, without waiting")
    smoke.set_defaults(func=cmd_smoke)

    status = commands.add_parser(
        "status",
        help="what serves where: per model its owner, versions, metrics and each environment's labels",
        description=(
            "Show, per model, its owner, its published versions with their metrics, and per\n"
            "environment the stable version, the canary and its weight. With --stack, only that\n"
            "stack's environment. With --live, also ask each model's TF-Serving status endpoint\n"
            "(GET /v1/models/<name>) through the stack's host, as `modelctl smoke` does, show the\n"
            "versions loaded and their state, and flag every difference from the manifest: a\n"
            "declared version not loaded or not AVAILABLE, a loaded version not declared, a model\n"
            "that does not answer. (With a canary, one request reaches one of the two workloads\n"
            "behind the weighted route: the other's version is noted, not flagged.)"
        ),
        epilog=(
            "exit codes:\n"
            "  0  shown; with --live, every model's loaded versions match the manifest\n"
            "  1  with --live, a difference or an unreachable model; or bad input\n"
            "\n"
            "examples:\n"
            "  modelctl status\n"
            "  modelctl status --stack prod --live --format json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--stack", type=_stack, help="only this stack's environment (needed by --live)")
    status.add_argument("--live", action="store_true", help="ask TF-Serving which versions it has loaded")
    status.add_argument("--base-url", help="with --live: where to ask (default: https://<the stack's host>)")
    status.add_argument("--timeout", type=_seconds, default=10.0, help="seconds per request (default 10)")
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    catalog = commands.add_parser(
        "catalog",
        help="write the model catalog: a static web site of every model",
        description=(
            "Write a static site (no server, no external assets) to DIR: an index of every model\n"
            "with a filter by name and owner, and per model its card, owner, versions and metrics\n"
            "(a chart over versions), what each environment serves, its contract (OpenAPI documents,\n"
            "inputs and outputs, an example curl on a stack's host) and links to its Grafana\n"
            "dashboard and to its manifest's history. DIR is replaced as a whole; it must be new,\n"
            "empty, or a catalog this command wrote."
        ),
        epilog=(
            "exit codes:\n"
            "  0  written\n"
            "  1  DIR is a file or another directory with content, a bad URL, or an invalid project\n"
            "\n"
            "example:\n"
            "  modelctl catalog --out build/catalog --grafana-url https://grafana.example.com"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    catalog.add_argument("--out", type=Path, required=True, metavar="DIR")
    catalog.add_argument(
        "--stack",
        type=_stack,
        help="the stack whose host the example curl calls (default: a production stack serving the model)",
    )
    catalog.add_argument("--grafana-url", metavar="URL", help="Grafana's base URL; without it, dashboards are named")
    catalog.add_argument(
        "--repo-url",
        metavar="URL",
        help="the repository's web URL for manifest history (default: origin, when it is on GitHub)",
    )
    catalog.add_argument("--branch", default="main", help="the branch whose history is linked (default main)")
    catalog.set_defaults(func=cmd_catalog)

    owners = commands.add_parser("codeowners", help="print .github/CODEOWNERS from the manifests' owners")
    owners.set_defaults(func=cmd_codeowners)

    rollback = commands.add_parser("rollback", help="serve the previous stable version again")
    rollback.add_argument("model")
    rollback.add_argument("--env", required=True)
    rollback.set_defaults(func=cmd_rollback)
    return parser


class _TerminalStream:
    """A text stream whose every write goes through sinks.terminal_output: whatever a command
    prints (manifest text, a server's answer, an error quoting either), no escape sequence in it
    reaches the terminal raw."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(sinks.terminal_output(text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _TerminalStream(sys.stdout), _TerminalStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.root.is_dir():
        print(f"modelctl: --root {args.root}: not a directory", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_ERROR
    except (
        RevisionError,
        StoreError,
        PromotionError,
        SavedModelError,
        RecipeError,
        TrainingError,
        RenderError,
        CatalogError,
        DataError,
        MissingToolsError,
        RetrainError,
    ) as exc:
        print(f"modelctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; Python's advice: silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"modelctl: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("MODELCTL_DEBUG"):
            raise
        print(
            f"modelctl: internal error: {type(exc).__name__}: {exc} (MODELCTL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def main_entry() -> None:
    """Console-script entry point (`modelctl`)."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
