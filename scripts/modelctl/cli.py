"""Command line of `modelctl`: a thin layer that parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.platform.object_store import StoreError
from infra.spec.errors import ConfigError, ErrorItem
from scripts.modelctl.promote import PromotionError
from scripts.modelctl.report import DIFF_BUDGET
from scripts.modelctl.snapshot import RevisionError
from scripts.training.recipes import RecipeError
from scripts.training.savedmodel import SavedModelError
from scripts.training.train import TrainingError

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
    from infra.spec.project import validate_project

    settings, errors = validate_project(args.root)
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
    from infra.spec.project import validate_project
    from infra.spec.settings import stack_names
    from scripts.modelctl.plancache import PlanCache, default_directory
    from scripts.modelctl.render import render
    from scripts.modelctl.report import build_report, render_json, render_markdown, render_text

    stacks = stack_names(args.root) if args.all_stacks else list(dict.fromkeys(args.stack or []))
    if not stacks:
        print("modelctl plan: name a --stack or use --all-stacks", file=sys.stderr)
        return EXIT_ERROR
    if args.max_diff_chars < 0:
        print("modelctl plan: --max-diff-chars takes 0 (no limit) or a positive number", file=sys.stderr)
        return EXIT_ERROR
    _, errors = validate_project(args.root)
    if errors:
        _print_errors(errors)
        return EXIT_ERROR
    cache = None if args.no_cache else PlanCache(args.cache_dir or default_directory(args.root))
    report = build_report(args.root, stacks, args.base, cache=cache, allow_incremental=not args.full)
    # The mandatory rules (engine emulation included) always apply: what they refuse, a
    # real `pulumi up` or the engines behind it would refuse or get wrong.
    if not apply_policies(args.root, report.head_runs, show_advisory=args.policy):
        return EXIT_ERROR
    if args.check_artifacts:
        problems = check_artifacts(args.root, stacks)
        if problems:
            _print_errors(problems)
            return EXIT_ERROR
    if args.format == "json":
        print(json.dumps(render_json(report), indent=2, sort_keys=False))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(report, diff_budget=args.max_diff_chars))
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


def apply_policies(root: Path, runs: dict, show_advisory: bool = False) -> bool:
    """The policy pack's rules over each stack's resources; False on a mandatory violation,
    each printed with the rule, the resource and the fix."""
    from scripts.modelctl.guardrails import MANDATORY, check, stack_policy_settings

    passed = True
    for stack, run in runs.items():
        for violation in check(run, stack_policy_settings(root, stack)):
            if violation.enforcement == MANDATORY or show_advisory:
                print(f"policy: stack {stack}: {violation}", file=sys.stderr)
            passed = passed and violation.enforcement != MANDATORY
    return passed


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
        problems += verify_served_versions(served_in(manifests, settings.environment), settings.object_store)
    return problems


def cmd_train(args: argparse.Namespace) -> int:
    from scripts.modelctl import manifest_edit
    from scripts.training.recipes import recipe_for
    from scripts.training.train import train

    manifest = manifest_edit.load(args.root, args.model)
    recipe = recipe_for(args.model)
    trained = train(manifest, recipe, args.version, args.out)
    metrics = ", ".join(f"{k} {v:g}" for k, v in sorted(trained.metrics.items()))
    print(f"trained {args.model} version {args.version}: {metrics} (held-out split) -> {trained.path}")
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from scripts.modelctl.publish import publish_model

    published = publish_model(
        args.root, args.model, args.savedmodel, args.stack, args.version, args.takeover, progress=not args.quiet
    )
    print(
        f"published {args.model} version {published.version}: {published.files} files, {published.bytes} bytes "
        f"-> {published.url} ({published.digest}); recorded in models/{args.model}.yaml"
    )
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    from scripts.modelctl.promote import promote

    comparison = promote(args.root, args.model, args.env, args.version, args.canary, weight=args.weight)
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
    from infra.spec.manifest import load_manifests, served_in
    from infra.spec.settings import load_stack_settings
    from scripts.modelctl.smoke import smoke_model

    settings = load_stack_settings(args.root, args.stack)
    base_url = args.base_url or f"https://{settings.routing.host}"
    models = served_in(load_manifests(args.root), settings.environment)
    if settings.flagger and not args.no_wait and not _await_flagger(args, settings, [m.name for m in models]):
        return EXIT_ERROR
    checks = [check for model in models for check in smoke_model(model, base_url, args.timeout)]
    for check in checks:
        print(check)
    failed = [c for c in checks if not c.ok]
    print(f"{len(models)} models at {base_url}: {len(checks) - len(failed)} checks passed, {len(failed)} failed")
    return EXIT_ERROR if failed else EXIT_OK


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
            report=lambda verdict: print(f"rollout {verdict}", flush=True),
        )
    except RolloutError as exc:
        print(f"modelctl smoke: {exc}", file=sys.stderr)
        return False
    unsettled = [v for v in verdicts if v.outcome is not Outcome.promoted]
    for verdict in unsettled:
        if verdict.outcome is Outcome.failed:
            print(f"modelctl smoke: {verdict.model}: rollout failed: {verdict.detail}", file=sys.stderr)
        else:
            print(
                f"modelctl smoke: {verdict.model}: no verdict from Flagger within {args.rollout_timeout:g} s "
                f"(last phase: {verdict.phase or 'none'}; {verdict.detail})",
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: versions start at 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: seconds are a finite number, 0 or more")
    return value


def _percent(text: str) -> int:
    value = _positive(text)
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
    which.add_argument("--stack", action="append", help="stack name (stacks/Pulumi.<stack>.yaml); repeatable")
    which.add_argument("--all-stacks", action="store_true", help="every stack under stacks/")
    plan.add_argument("--base", metavar="REF", help="git revision to diff against (its own program and manifests)")
    plan.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    plan.add_argument("--render", type=Path, metavar="DIR", help="write each Kubernetes object as YAML under DIR")
    plan.add_argument(
        "--max-diff-chars",
        type=int,
        default=DIFF_BUDGET,
        metavar="N",
        help=f"markdown: YAML diffs up to N characters (default {DIFF_BUDGET}, within GitHub's comment limit; 0: all)",
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

    policy = commands.add_parser("policy-config", help="print a stack's --policy-pack-config JSON")
    policy.add_argument("--stack", required=True)
    policy.set_defaults(func=cmd_policy_config)

    train = commands.add_parser("train", help="train an example model and export a SavedModel")
    train.add_argument("model")
    train.add_argument("--version", type=_positive, required=True)
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/<model>/<version>/")
    train.set_defaults(func=cmd_train)

    publish = commands.add_parser("publish", help="publish a SavedModel as an immutable version")
    publish.add_argument("model")
    publish.add_argument("savedmodel", type=Path, metavar="SAVEDMODEL_DIR")
    publish.add_argument("--stack", required=True, help="whose object store (stacks/Pulumi.<stack>.yaml)")
    publish.add_argument("--version", type=_positive, help="default: the next after the newest published")
    publish.add_argument("--takeover", action="store_true", help="replace the claim of an interrupted publish")
    publish.add_argument("--quiet", action="store_true", help="no progress bar")
    publish.set_defaults(func=cmd_publish)

    promote = commands.add_parser("promote", help="serve a version if it beats the champion")
    promote.add_argument("model")
    promote.add_argument("--env", required=True, help="environment (a stack's `environment`)")
    promote.add_argument("--version", type=_positive, help="default: the newest published")
    promote.add_argument("--canary", action="store_true", help="serve it as the canary instead of stable")
    promote.add_argument(
        "--weight", type=_percent, default=10, help="with --canary: its share of the traffic, %% (default 10)"
    )
    promote.set_defaults(func=cmd_promote)

    from scripts.modelctl.rollout import POLL_INTERVAL_SECONDS, ROLLOUT_TIMEOUT_SECONDS

    smoke = commands.add_parser(
        "smoke",
        help="call every model's REST status and one predict (after Flagger's verdict on Flagger stacks)",
        description=(
            "Call every model's REST status and one predict with its example request. On a stack with\n"
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
    smoke.add_argument("--stack", required=True)
    smoke.add_argument("--base-url", help="default: https://<the stack's host>")
    smoke.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
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

    owners = commands.add_parser("codeowners", help="print .github/CODEOWNERS from the manifests' owners")
    owners.set_defaults(func=cmd_codeowners)

    rollback = commands.add_parser("rollback", help="serve the previous stable version again")
    rollback.add_argument("model")
    rollback.add_argument("--env", required=True)
    rollback.set_defaults(func=cmd_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.root.is_dir():
        print(f"modelctl: --root {args.root}: not a directory", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_ERROR
    except (RevisionError, StoreError, PromotionError, SavedModelError, RecipeError, TrainingError) as exc:
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
