"""Benchmark of the offline plan: N synthetic models, the prod stack, one fresh process per N.

`make bench` prints, per N: the plan's seconds, resources, milliseconds per resource and
the process's peak memory, then checks the targets (< 5 ms per resource; 1000 models
within 12x the time of 100).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 1000)
STACK = "prod"
TARGET_MS_PER_RESOURCE = 5.0
TARGET_GROWTH = 12.0


def synthetic_project(directory: Path, models: int) -> Path:
    """A project with `models` manifests cycled from the examples, each its own name and path."""
    shutil.copytree(ROOT / "stacks", directory / "stacks")
    (directory / "models").mkdir()
    examples = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "models").glob("*.yaml"))]
    for index in range(models):
        manifest = dict(examples[index % len(examples)])
        name = f"model-{index:04d}"
        manifest["name"] = name
        manifest["artifact"] = {"path": f"bench/{name}"}
        (directory / "models" / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return directory


def _import_everything() -> None:
    """Imports, timed apart: pulumi_kubernetes loads its API modules lazily on first use."""
    import importlib

    import infra.program  # noqa: F401

    for module in ("apps.v1", "core.v1", "autoscaling.v2", "policy.v1", "networking.v1", "apiextensions"):
        importlib.import_module(f"pulumi_kubernetes.{module}")


def measure(root: Path) -> dict:
    """Plan one stack in this process: run, diff against nothing, serialise the JSON report."""
    started = time.perf_counter()
    _import_everything()
    from infra.offline import OfflineRun, run_stack
    from scripts.modelctl.plan import plan_stack
    from scripts.modelctl.report import PlanReport, render_json

    imports = time.perf_counter() - started
    started = time.perf_counter()
    head = run_stack(root, STACK, short_lived=True)  # as `modelctl plan` runs it
    plan = plan_stack(STACK, OfflineRun(stack=STACK), head)
    json.dumps(render_json(PlanReport([plan], None, "bench")))
    seconds = time.perf_counter() - started
    return {
        "imports": imports,
        "seconds": seconds,
        "resources": len(head.resources),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return 0
    results = {}
    print("Offline plan of the prod stack, one fresh process per size (imports timed apart).")
    print(f"{'models':>7} {'seconds':>8} {'resources':>9} {'ms/resource':>11} {'peak MiB':>9} {'imports s':>9}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-plan-") as scratch:
            project = synthetic_project(Path(scratch), size)
            child = subprocess.run(
                [sys.executable, "-m", "scripts.bench_plan", "--child", str(project)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
        result = json.loads(child.stdout)
        result["ms_per_resource"] = result["seconds"] / result["resources"] * 1000
        results[size] = result
        print(
            f"{size:>7} {result['seconds']:>8.2f} {result['resources']:>9} "
            f"{result['ms_per_resource']:>11.2f} {result['peak_mib']:>9.0f} {result['imports']:>9.2f}"
        )
    worst = max(r["ms_per_resource"] for r in results.values())
    print(
        f"target: under {TARGET_MS_PER_RESOURCE} ms per resource: worst {worst:.2f} -> "
        f"{'met' if worst < TARGET_MS_PER_RESOURCE else 'MISSED'}"
    )
    if 100 in results and 1000 in results:
        growth = results[1000]["seconds"] / results[100]["seconds"]
        print(
            f"target: 1000 models within {TARGET_GROWTH:g}x of 100: {growth:.1f}x -> "
            f"{'met' if growth <= TARGET_GROWTH else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
