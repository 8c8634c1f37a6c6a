"""Command line of `modelctl`: a thin layer that parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.errors import ConfigError, ErrorItem

EXIT_OK = 0
EXIT_ERROR = 1


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
    from infra.project import validate_project

    settings, errors = validate_project(args.root)
    if errors:
        _print_errors(errors)
        return EXIT_ERROR
    print(f"ok: {len(settings)} stack(s) and every manifest under {args.root / 'models'} are valid")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from infra.manifest import manifest_json_schema

    text = json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from infra.offline import run_stack
    from infra.project import validate_project
    from scripts.modelctl.render import group_of, render

    _, errors = validate_project(args.root)
    if errors:
        _print_errors(errors)
        return EXIT_ERROR
    run = run_stack(args.root, args.stack)
    by_urn = run.by_urn()
    rows = sorted(
        (_group_rank(group_of(r, by_urn)), group_of(r, by_urn), r.type, r.name, _parent_name(r, by_urn))
        for r in run.resources
    )
    print(f"Stack {args.stack}: {len(rows)} resources")
    width = max(len(row[2]) for row in rows)
    name_width = max(len(row[3]) for row in rows)
    for _, _, type_, name, parent in rows:
        print(f"  {type_:<{width}}  {name:<{name_width}}  parent: {parent}")
    if args.render:
        files = render(run, args.render)
        print(f"Rendered {len(files)} Kubernetes objects to {args.render}/")
    return EXIT_OK


def _group_rank(group: str) -> int:
    """Stack-level resources first, then the platform, then the models by name."""
    return 0 if group == "" else 1 if group == "platform" else 2


def _parent_name(resource, by_urn) -> str:
    parent = by_urn.get(resource.parent or "")
    if parent is not None:
        return parent.name
    # The root Stack resource is not recorded; its URN ends with its name.
    return resource.parent.rsplit("::", 1)[-1] if resource.parent else "-"


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

    plan = commands.add_parser("plan", help="run the program offline under Pulumi's mocks")
    plan.add_argument("--stack", required=True, help="stack name (stacks/Pulumi.<stack>.yaml)")
    plan.add_argument("--render", type=Path, metavar="DIR", help="write each Kubernetes object as YAML under DIR")
    plan.set_defaults(func=cmd_plan)
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


def main_entry() -> None:
    """Console-script entry point (`modelctl`)."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
