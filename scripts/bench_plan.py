"""Benchmarks of the offline plan.

Scale: N synthetic models, the prod stack, one fresh process per N: the plan's seconds,
resources, milliseconds per resource and peak memory; targets < 5 ms per resource and 1000
models within 12x the time of 100.

Pull request: a git repository of N synthetic models, one commit bumping one model's prod
version, `modelctl plan --all-stacks --base HEAD~1 --format markdown` as CI runs it (from the
repository, in a fresh process): incremental on an empty plan cache, incremental with the cache
a plan of the base commit left (as main's plan-cache.yml keeps it for pull requests), the same
in one process (--jobs 1, from the same cache), and full. Seconds, the plan process's peak
memory, and the peak of its process tree (a base revision's subprocess, the policy worker).
Target: 1000 models, incremental, under 10 s and 1.5 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from scripts.project_copy import copy_project_files

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 1000)
STACK = "prod"
TARGET_MS_PER_RESOURCE = 5.0
TARGET_GROWTH = 12.0
PR_SIZES = (100, 1000)
PR_TARGET_SECONDS = 10.0
PR_TARGET_MIB = 1.5 * 1024
# What a revision needs to be planned with its own program and tooling.
PROJECT_FILES = ("infra", "scripts", "policy", "stacks", "Pulumi.yaml", "__main__.py", "requirements.txt")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


# servingPools.pools[].maxModels at most (infra/spec/serving_pools.py).
MAX_POOL_MODELS = 1000
# Seconds of quiet after the sync, before a plan is timed.
SETTLE_SECONDS = 3


def synthetic_project(directory: Path, models: int) -> Path:
    """A project with `models` manifests cycled from the examples, each its own name and path,
    and node pools sized for them (or the scheduling check would rightly refuse the fleet)."""
    shutil.copytree(ROOT / "stacks", directory / "stacks")
    scale_node_pools(directory, models)
    write_models(directory, models)
    return directory


def scale_node_pools(directory: Path, models: int) -> None:
    """Give the stacks that list their nodes enough of them for `models` models, and their serving
    pools room for them all (a shard holds at most `maxModels`, or placement refuses the fleet)."""
    for path in (directory / "stacks").glob("Pulumi.*.yaml"):
        document = yaml.safe_load(path.read_text())
        cluster = document["config"].get("model-serving:cluster") or {}
        eks = cluster.get("eks")
        if eks:
            eks["cpuNodes"]["maxSize"] = max(eks["cpuNodes"]["maxSize"], 4 * models)
        for pool in cluster.get("nodePools") or []:
            pool["count"] = max(pool["count"], models)
            pool.pop("maxCount", None)
        for pool in (document["config"].get("model-serving:servingPools") or {}).get("pools", []):
            pool["maxModels"] = min(MAX_POOL_MODELS, max(pool.get("maxModels", 0), models))
        path.write_text(yaml.safe_dump(document, sort_keys=False))


def synthetic_name(index: int) -> str:
    return f"model-{index:04d}"


def write_models(directory: Path, models: int) -> list[str]:
    """`models` manifests under `directory/models/` (replacing any), cycled from the examples:
    even indexes are iris, odd ones taxi-fare, each with its own name and artifact path."""
    folder = directory / "models"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    examples = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "models").glob("*.yaml"))]
    names = []
    for index in range(models):
        manifest = dict(examples[index % len(examples)])
        name = synthetic_name(index)
        manifest["name"] = name
        manifest["artifact"] = {"path": f"bench/{name}"}
        manifest["environments"] = fleet_environments(manifest["environments"])
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        names.append(name)
    return names


# The kind e2e's pool environment: two named members there, not a fleet (a thousand copies in
# its one-shard pool would neither fit maxModels nor a node).
E2E_ONLY_ENVIRONMENTS = ("kind-pools",)


def fleet_environments(environments: dict) -> dict:
    """A synthetic copy's environments: the examples' own, less the e2e's pool environment."""
    return {env: served for env, served in environments.items() if env not in E2E_ONLY_ENVIRONMENTS}


def bump_stable(manifest: Path, environment: str) -> None:
    """The pull request of the benchmark: serve another published version as `environment`'s stable."""
    document = yaml.safe_load(manifest.read_text())
    served = document["environments"][environment]
    published = sorted(document["versions"])
    served["stable"] = next(v for v in reversed(published) if v != served["stable"])
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))


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


# Pull request ---------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=os.environ | GIT_IDENTITY)


def pull_request_repository(directory: Path, models: int) -> Path:
    """This project with `models` synthetic manifests, committed; then a commit that bumps
    the prod version of the first model (the pull request; its base is HEAD~1)."""
    copy_project_files(PROJECT_FILES, directory)
    (directory / ".gitignore").write_text("build/\n__pycache__/\n")
    names = write_models(directory, models)
    # Node pools sized for the fleet (eks, kind), or `pods-schedule` rightly fails the plan.
    scale_node_pools(directory, models)
    _git(directory, "init", "-q", "-b", "main")
    _git(directory, "add", "-A")
    _git(directory, "commit", "-q", "-m", "base")
    return directory / "models" / f"{names[0]}.yaml"


def plan_in_fresh_process(repo: Path, *options: str) -> dict:
    """`modelctl plan --all-stacks --format markdown` run from `repo` with its own code, timed
    from the outside. Memory: the plan process's own peak (exact, from the kernel), and the
    peak of the summed resident memory of its whole process tree, sampled every 50 ms (the
    base revision runs in a child, alive while the plan process waits for it; a child's own
    peak as the kernel keeps it would count the parent's pages it was forked with)."""
    # What the benchmark itself just wrote (a fleet, a copied cache: hundreds of MB) is flushed
    # first, so that the kernel's writeback does not run on the plan's time.
    os.sync()
    time.sleep(SETTLE_SECONDS)
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "scripts.bench_plan", "--plan-child", report.name, "--", *options],
            cwd=repo,
            env=os.environ | {"PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tree_peak = 0
        while child.poll() is None:
            tree_peak = max(tree_peak, tree_resident_bytes(child.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            raise RuntimeError(f"the plan process failed with exit code {child.returncode}")
        result = json.loads(Path(report.name).read_text())
    return result | {"seconds": seconds, "tree_mib": max(tree_peak / 2**20, result["self_mib"])}


def tree_resident_bytes(root: int) -> int:
    """Resident memory of process `root` and all its descendants now (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * resource.getpagesize()
        except OSError:
            continue
    return total


def plan_child(report: Path, options: list[str]) -> int:
    from scripts.modelctl.cli import main as modelctl

    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = modelctl(["plan", "--all-stacks", "--format", "markdown", *options])
    mode = next((line for line in output.getvalue().splitlines() if line.startswith("_")), "")
    report.write_text(
        json.dumps(
            {
                "exit": code,
                # The comment escapes the line's punctuation (sinks.md_text): `plan\: ...`.
                "mode": mode.strip("_").replace("\\", "").split(":")[0],
                "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )
    return 0


def pull_request_scenario(sizes: list[int], full_sizes: set[int]) -> dict[tuple[int, str], dict]:
    print()
    print("Pull request: one model's prod version bumped, `modelctl plan --all-stacks --base HEAD~1")
    print("--format markdown` from a fresh process. Peak memory: the plan process's own, and its")
    print("process tree's (with the base revision's subprocess and git; sampled).")
    print(f"{'models':>7}  {'plan':<36} {'seconds':>8} {'MiB':>6} {'tree MiB':>8} {'exit':>4}   mode")
    results = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-pr-") as scratch:
            repo = Path(scratch) / "repo"
            repo.mkdir()
            bumped = pull_request_repository(repo, size)
            cache = ["--cache-dir", str(Path(scratch) / "cache")]
            # First the plan of the base commit (no change), as CI ran it when the base was
            # merged: on an empty cache, it stores every model's resources.
            runs = {"incremental, empty cache (base plan)": plan_in_fresh_process(repo, "--base", "HEAD", *cache)}
            bump_stable(bumped, "prod")
            _git(repo, "commit", "-q", "-am", "bump")
            # The same cache for both: the first run stores the head's entries.
            warm = Path(scratch) / "cache-of-the-base-plan"
            shutil.copytree(Path(scratch) / "cache", warm)
            runs["incremental, cache of the base plan"] = plan_in_fresh_process(repo, "--base", "HEAD~1", *cache)
            shutil.rmtree(Path(scratch) / "cache")
            shutil.copytree(warm, Path(scratch) / "cache")
            runs["  the same, one process (--jobs 1)"] = plan_in_fresh_process(
                repo, "--base", "HEAD~1", "--jobs", "1", *cache
            )
            if size in full_sizes:
                runs["full (--full --no-cache)"] = plan_in_fresh_process(
                    repo, "--base", "HEAD~1", "--full", "--no-cache"
                )
            for label, result in runs.items():
                results[(size, label)] = result
                print(
                    f"{size:>7}  {label:<36} {result['seconds']:>8.2f} {result['self_mib']:>6.0f} "
                    f"{result['tree_mib']:>8.0f} {result['exit']:>4}   {result['mode']}"
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("options", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="scale benchmark sizes")
    parser.add_argument("--pr-sizes", type=int, nargs="*", default=list(PR_SIZES), help="pull-request scenario sizes")
    parser.add_argument(
        "--pr-full-1000",
        action="store_true",
        help="also time the full plan of the pull request at 1000 models (about ten minutes on 2 cores)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return 0
    if args.plan_child:
        return plan_child(args.plan_child, args.options)
    if args.sizes:
        scale(args.sizes)
    if args.pr_sizes:
        full_sizes = {s for s in args.pr_sizes if s < 1000 or args.pr_full_1000}
        results = pull_request_scenario(args.pr_sizes, full_sizes)
        target = results.get((1000, "incremental, cache of the base plan"))
        if target:
            # A plan that failed (exit 1) measured nothing: 0 no changes, 2 changes.
            met = (
                target["exit"] in (0, 2)
                and target["seconds"] < PR_TARGET_SECONDS
                and target["tree_mib"] < PR_TARGET_MIB
            )
            print(
                f"target: 1000 models, one bump, all stacks, incremental: under {PR_TARGET_SECONDS:g} s and "
                f"{PR_TARGET_MIB / 1024:g} GiB: {target['seconds']:.1f} s, {target['tree_mib'] / 1024:.2f} GiB -> "
                f"{'met' if met else 'MISSED'}"
            )
    return 0


def scale(sizes: list[int]) -> None:
    results = {}
    print("Offline plan of the prod stack, one fresh process per size (imports timed apart).")
    print(f"{'models':>7} {'seconds':>8} {'resources':>9} {'ms/resource':>11} {'peak MiB':>9} {'imports s':>9}")
    for size in sizes:
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


if __name__ == "__main__":
    sys.exit(main())
