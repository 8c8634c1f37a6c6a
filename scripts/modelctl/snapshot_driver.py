"""Subprocess entry: run a tree's own program offline for some stacks and write JSON.

Run by path with `--root TREE`; TREE goes first on sys.path so its `infra/` is imported,
not the caller's. Kept to what every revision's `infra.offline.run_stack` offers.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--only-models", type=Path, help="JSON list: declare the platform and only these models")
    parser.add_argument("stacks", nargs="*")
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import inspect

    from infra.offline import run_stack

    # This process ends after writing: skip the final garbage collection where supported.
    parameters = inspect.signature(run_stack).parameters
    options = {"short_lived": True} if "short_lived" in parameters else {}
    # The plan's incremental mode; a revision whose program cannot declare a subset declares
    # everything, and the document says so (`subset: false`).
    subset = args.only_models is not None and "only_models" in parameters
    if subset:
        options["only_models"] = json.loads(args.only_models.read_text())

    document = {"stacks": {}, "errors": [], "subset": subset}
    for stack in args.stacks:
        try:
            run = run_stack(args.root, stack, **options)
        except Exception as exc:
            errors = getattr(exc, "errors", None)
            if errors is None:
                raise
            document["errors"] += [{"file": e.file, "field": e.field, "message": e.message} for e in errors]
            continue
        document["stacks"][stack] = {
            "resources": [dataclasses.asdict(r) for r in run.resources],
            "outputs": run.outputs,
            "served_models": getattr(run, "served_models", None),
        }
    args.output.write_text(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
