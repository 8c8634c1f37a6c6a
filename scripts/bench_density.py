"""Density benchmark: a fleet of small models served dedicated against pooled.

The fleet: N copies of models/iris.yaml, each its own name and artifact path, made small (see
SMALL_RESOURCES; prod keeps iris's autoscaling, min 2 max 6, and its availability objective
0.995, below the production keep-apart threshold 0.999, so every model may share). Dedicated:
the stacks as they are, one TF-Serving Deployment per model. Pooled: the same manifests, and
every stack the fleet is served in declares one `auto` serving pool (POOL), without Flagger.

Density, from the offline run of the prod stack (one fresh process per fleet): pods, requested
CPU and memory at minimum replicas (HPA minReplicas x the Deployment's container requests, as
`modelctl plan` reports capacity), and the stack's resources. With Flagger (prod), a model's
pods at steady state are its primary's, which Flagger makes from the declared Deployment and HPA:
the same count.

Pull request, pooled fleet, at 100 and 1000 models in the same run: main's cold plan-cache job
(`modelctl plan --all-stacks --base HEAD --prune-cache` on an empty cache: seconds, peak memory
of the process tree), then one model's prod version bumped and `modelctl plan --all-stacks
--base HEAD~1 --format markdown` from that cache, as a pull request runs it (PR_REPEATS times: the
median counts). The machines vary by about 2x from day to day, so the growth 1000/100 is the
target that holds across them.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes.utils.quantity import parse_quantity

from scripts.bench_plan import (
    E2E_ONLY_ENVIRONMENTS,
    PROJECT_FILES,
    _git,
    bump_stable,
    fleet_environments,
    plan_in_fresh_process,
    scale_node_pools,
    synthetic_name,
)
from scripts.project_copy import copy_project_files

# libyaml when present: a fleet is a thousand manifests.
YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
YamlDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

ROOT = Path(__file__).resolve().parent.parent
STACK = "prod"
FLEET = 1000
PR_SIZES = (100, 1000)
# A small model: iris's own resources are 250m / 256Mi; one loaded copy of it takes far less.
SMALL_RESOURCES = {"cpu": "100m", "memory": "256Mi", "memory_limit": "384Mi", "model_memory": "32Mi"}
# Prod's pool: 16 shards of at most 100 models (about 63 each at 1000 models).
POOL = {
    "name": "shared",
    "packing": "auto",
    "shards": 16,
    "maxModels": 100,
    "resources": {"cpu": "2", "memory": "1Gi"},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 8},
}
TARGET_PODS = 10.0  # at least this many times fewer pods
TARGET_MEMORY = 5.0  # at least this many times less requested memory
TARGET_RESOURCES = 1 / 3  # at most this share of the resources per stack
TARGET_PR_SECONDS = 10.0
TARGET_GROWTH = 2.0
TARGET_COLD_SECONDS = 90.0
TARGET_COLD_MIB = 3 * 1024
# The pull request's plan is timed this many times (fresh processes, same cache); the median counts.
PR_REPEATS = 5
GIB = 2**30


@functools.cache
def _iris() -> str:
    return (ROOT / "models" / "iris.yaml").read_text()


def small_manifest(name: str) -> dict:
    """models/iris.yaml as a small model named `name`, with its own artifact path."""
    manifest = yaml.load(_iris(), Loader=YamlLoader)
    manifest["name"] = name
    manifest["artifact"] = {"path": f"bench/{name}"}
    manifest["serving"]["resources"] = dict(SMALL_RESOURCES)
    manifest["environments"] = fleet_environments(manifest["environments"])
    return manifest


def write_fleet(directory: Path, models: int) -> list[str]:
    """`models` small manifests under `directory/models/` (replacing any)."""
    folder = directory / "models"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    names = [synthetic_name(index) for index in range(models)]
    for name in names:
        (folder / f"{name}.yaml").write_text(yaml.dump(small_manifest(name), Dumper=YamlDumper, sort_keys=False))
    return names


def edit_stacks(directory: Path, pooled: bool, flagger: bool) -> None:
    """Dedicated: no stack declares a serving pool (the local stack's included), one workload per
    model as on main; prod runs without Flagger unless `flagger`. Pooled: every stack the fleet
    is served in serves it from POOL (the local stack's own one-shard pool would hold the whole
    fleet in one shard), and no stack runs Flagger (the program refuses pools on a Flagger stack:
    a Canary rolls a pool's Deployment as a whole)."""
    for path in (directory / "stacks").glob("Pulumi.*.yaml"):
        document = yaml.safe_load(path.read_text())
        config = document["config"]
        fleet_served = config.get("model-serving:environment", path.stem.split(".", 1)[1]) not in E2E_ONLY_ENVIRONMENTS
        if not pooled:
            config.pop("model-serving:servingPools", None)
        elif fleet_served:
            config["model-serving:servingPools"] = {"pools": [POOL]}
        if pooled or (path.name == f"Pulumi.{STACK}.yaml" and not flagger):
            config.pop("model-serving:progressiveDelivery", None)
        path.write_text(yaml.safe_dump(document, sort_keys=False))


def fleet_project(directory: Path, models: int, pooled: bool, flagger: bool = False) -> list[str]:
    """Stacks (node and serving pools sized for the fleet, then `edit_stacks`) and the fleet's manifests."""
    if pooled and flagger:
        raise ValueError("serving pools are off on a Flagger stack")
    if not (directory / "stacks").exists():
        shutil.copytree(ROOT / "stacks", directory / "stacks")
    scale_node_pools(directory, models)
    edit_stacks(directory, pooled, flagger)
    return write_fleet(directory, models)


# Density --------------------------------------------------------------------------------------


def density(run) -> dict:
    """Pods, requested CPU (cores) and memory (bytes) at minimum replicas, and the resources of
    one offline run; `workloads`: the Deployments (dedicated models and pool shards)."""
    from scripts.modelctl.plan import capacity

    workloads = capacity(run)
    return {
        "workloads": len(workloads),
        "pods": sum(c.min_replicas for c in workloads.values()),
        "cpu": sum(c.min_replicas * c.cpu for c in workloads.values()),
        "memory": sum(c.min_replicas * c.memory for c in workloads.values()),
        "resources": len(run.resources),
        "kubernetes_objects": sum(1 for _ in run.kubernetes_objects()),
    }


def measure_density(project: Path) -> dict:
    """The prod stack of `project`, run offline in this process."""
    from infra.offline import run_stack

    started = time.perf_counter()
    run = run_stack(project, STACK, short_lived=True)
    return density(run) | {"seconds": time.perf_counter() - started}


def density_in_fresh_process(models: int, pooled: bool, flagger: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-density-") as scratch:
        fleet_project(Path(scratch), models, pooled, flagger)
        child = subprocess.run(
            [sys.executable, "-m", "scripts.bench_density", "--density-child", scratch],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    if child.returncode != 0:
        raise RuntimeError(f"the offline run failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.splitlines()[-1])


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# The rows of the density table: (label, pooled, flagger).
DENSITY_FLEETS = (
    ("dedicated, prod as is (Flagger)", False, True),
    ("dedicated", False, False),
    ("pooled", True, False),
)


def density_scenario(models: int) -> list[tuple[str, bool]]:
    memory = parse_quantity(SMALL_RESOURCES["model_memory"])
    print(f"Density: {models} small models, the prod stack's offline run. Each model: models/iris.yaml with")
    print(f"resources {json.dumps(SMALL_RESOURCES)}, prod autoscaling min 2 max 6, availability 0.995")
    print("(below production's keep-apart 0.999, no dedicatedAvailability set: every model may share).")
    print(f"Pooled: prod servingPools {json.dumps({'pools': [POOL]})}:")
    print(f"a pool pod requests {POOL['resources']['memory']} + {memory / 2**20:g}Mi per member. The program refuses")
    print("pools on a Flagger stack, so both fleets compared run prod without progressiveDelivery;")
    print("the first row is the dedicated fleet on prod as it is.")
    rows = {label: density_in_fresh_process(models, pooled, flagger) for label, pooled, flagger in DENSITY_FLEETS}
    print(
        f"{'fleet':<32} {'workloads':>9} {'pods@min':>8} {'CPU@min':>8} {'GiB@min':>8} "
        f"{'resources':>9} {'k8s objects':>11} {'run s':>6}"
    )
    for label, row in rows.items():
        print(
            f"{label:<32} {row['workloads']:>9} {row['pods']:>8} {row['cpu']:>8.1f} {row['memory'] / GIB:>8.1f} "
            f"{row['resources']:>9} {row['kubernetes_objects']:>11} {row['seconds']:>6.1f}"
        )
    dedicated, pooled = rows["dedicated"], rows["pooled"]
    pods = dedicated["pods"] / pooled["pods"]
    cpu = dedicated["cpu"] / pooled["cpu"]
    memory_ratio = dedicated["memory"] / pooled["memory"]
    share = pooled["resources"] / dedicated["resources"]
    as_is = pooled["resources"] / rows[DENSITY_FLEETS[0][0]]["resources"]
    print(
        f"{'dedicated / pooled':<32} {'':>9} {pods:>7.1f}x {cpu:>7.1f}x {memory_ratio:>7.1f}x "
        f"{share:>9.2f}  resources pooled/dedicated ({as_is:.2f} of prod as is)"
    )
    return [
        (f"pods at min replicas: at least {TARGET_PODS:g}x fewer: {pods:.1f}x", pods >= TARGET_PODS),
        (
            f"requested memory at min replicas: at least {TARGET_MEMORY:g}x less: {memory_ratio:.1f}x",
            memory_ratio >= TARGET_MEMORY,
        ),
        (f"resources per stack: at most a third: {share:.2f}", share <= TARGET_RESOURCES),
    ]


# Pull request ---------------------------------------------------------------------------------


def pull_request_repository(directory: Path, models: int, pooled: bool) -> Path:
    """This project with the fleet committed (the base, main); returns the first manifest. The
    dedicated fleet runs prod as it is (Flagger), as main's figures were measured."""
    copy_project_files(PROJECT_FILES, directory)
    (directory / ".gitignore").write_text("build/\n__pycache__/\n")
    names = fleet_project(directory, models, pooled, flagger=not pooled)
    _git(directory, "init", "-q", "-b", "main")
    _git(directory, "add", "-A")
    _git(directory, "commit", "-q", "-m", "base")
    return directory / "models" / f"{names[0]}.yaml"


def pull_request_runs(models: int, pooled: bool) -> dict[str, dict]:
    """Main's cold plan-cache job, then the one-model pull request's plan from its cache."""
    with tempfile.TemporaryDirectory(prefix="bench-density-pr-") as scratch:
        repo = Path(scratch) / "repo"
        repo.mkdir()
        bumped = pull_request_repository(repo, models, pooled)
        cache = ["--cache-dir", str(Path(scratch) / "cache")]
        runs = {"cold": plan_in_fresh_process(repo, "--base", "HEAD", "--prune-cache", *cache)}
        bump_stable(bumped, STACK)
        _git(repo, "commit", "-q", "-am", "bump")
        runs["pr"] = median_run([plan_in_fresh_process(repo, "--base", "HEAD~1", *cache) for _ in range(PR_REPEATS)])
    return runs


def median_run(runs: list[dict]) -> dict:
    """The run of the median time, with the largest memory of them all: one slow or fast run of a
    few seconds (this machine varies) does not make the growth."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    middle = ordered[len(ordered) // 2]
    return middle | {"tree_mib": max(run["tree_mib"] for run in runs), "exit": max(run["exit"] for run in runs)}


def _ran(*runs: dict) -> bool:
    """A plan that failed measured nothing: exit 0 no changes, 2 changes."""
    return all(run["exit"] in (0, 2) for run in runs)


def pull_request_scenario(sizes: list[int], fleets: list[str]) -> list[tuple[str, bool]]:
    print()
    print("Pull request: main's cold plan-cache job (`modelctl plan --all-stacks --base HEAD --prune-cache`,")
    print("empty cache), then one model's prod version bumped, `modelctl plan --all-stacks --base HEAD~1")
    print(f"--format markdown` from that cache, {PR_REPEATS} times (PR s: the median); fresh processes; tree MiB:")
    print("the process tree's sampled peak.")
    print(
        f"{'fleet':<10} {'models':>6}  {'cold s':>7} {'cold tree MiB':>13} {'PR s':>6} {'PR tree MiB':>11}  exit  mode"
    )
    results: dict[tuple[str, int], dict[str, dict]] = {}
    for fleet in fleets:
        for size in sizes:
            runs = results[(fleet, size)] = pull_request_runs(size, fleet == "pooled")
            cold, pr = runs["cold"], runs["pr"]
            print(
                f"{fleet:<10} {size:>6}  {cold['seconds']:>7.1f} {cold['tree_mib']:>13.0f} {pr['seconds']:>6.1f} "
                f"{pr['tree_mib']:>11.0f}  {cold['exit']},{pr['exit']:<2}  "
                f"{pr['mode'] if _ran(cold, pr) else 'A PLAN FAILED: nothing measured (its stderr: run it by hand)'}",
                flush=True,
            )
    verdicts = []
    for fleet in fleets:
        small, large = results.get((fleet, 100)), results.get((fleet, 1000))
        if large is None:
            continue
        pr, cold = large["pr"], large["cold"]
        ran = _ran(cold, pr) and (small is None or _ran(*small.values()))
        if fleet == "pooled":
            verdicts.append(
                (
                    f"one-model PR plan, 1000 pooled, from main's cache: under {TARGET_PR_SECONDS:g} s: "
                    f"{pr['seconds']:.1f} s",
                    ran and pr["seconds"] < TARGET_PR_SECONDS,
                )
            )
            verdicts.append(
                (
                    f"main's cold plan-cache job, 1000 pooled: under {TARGET_COLD_SECONDS:g} s and "
                    f"{TARGET_COLD_MIB / 1024:g} GiB: {cold['seconds']:.0f} s, {cold['tree_mib'] / 1024:.2f} GiB",
                    ran and cold["seconds"] < TARGET_COLD_SECONDS and cold["tree_mib"] < TARGET_COLD_MIB,
                )
            )
        if small is not None:
            growth = pr["seconds"] / small["pr"]["seconds"]
            label = f"{fleet} PR plan growth 1000/100 models"
            if fleet == "pooled":
                verdicts.append(
                    (f"{label}: at most {TARGET_GROWTH:g}x: {growth:.1f}x", ran and growth <= TARGET_GROWTH)
                )
            else:
                print(f"{label}: {growth:.1f}x (main today, dedicated: 3.5x)")
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--density-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=int, default=FLEET, help="fleet size of the density row (default 1000)")
    parser.add_argument("--pr-sizes", type=int, nargs="*", default=list(PR_SIZES), help="pull-request fleet sizes")
    parser.add_argument(
        "--pr-dedicated",
        action="store_true",
        help="also time the pull request of the dedicated fleet (its cold job takes about ten minutes at 1000)",
    )
    args = parser.parse_args(argv)
    if args.density_child:
        print(json.dumps(measure_density(args.density_child)))
        return 0
    verdicts = density_scenario(args.models) if args.models else []
    if args.pr_sizes:
        fleets = ["pooled", "dedicated"] if args.pr_dedicated else ["pooled"]
        verdicts += pull_request_scenario(sorted(args.pr_sizes), fleets)
    for text, met in verdicts:
        # (A failed plan is reported as MISSED: its row says so.)
        print(f"target: {text} -> {_verdict(met)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
