"""The incremental plan: which changes it takes, that it equals the full plan for every kind of
manifest change on a 100-model fleet, that the policy checks still see whole stacks, and the
plan cache (exact hits, misses on any change of what determines an entry)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from scripts.bench_plan import bump_stable, synthetic_name, write_models
from scripts.modelctl import incremental, plancache, snapshot
from scripts.modelctl import scope as scopes
from scripts.modelctl.guardrails import check, stack_policy_settings
from scripts.modelctl.plancache import PlanCache
from scripts.modelctl.report import PlanReport, build_report, render_json, render_markdown, render_text
from scripts.project_copy import copy_project_files
from tests.conftest import ROOT, edit_yaml
from tests.test_plan import TREE, git, plan

FLEET = 100


def make_repo(directory: Path, models: int | None = None, prepare: Callable[[Path], None] | None = None) -> Path:
    """A git repository holding this project's program and stacks, one commit; with `models`,
    that many generated manifests instead of the examples, then `prepare`d."""
    directory.mkdir(parents=True)
    copy_project_files(TREE, directory)
    if models is not None:
        write_models(directory, models)
    if prepare is not None:
        prepare(directory)
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", "base")
    return directory


# The local stack packs the fleet into this many shards of its pool (64 models at most each).
LOCAL_SHARDS = 4
DEDICATED = 14  # the fleet's model that local serves on its own


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    def prepare(repo: Path) -> None:
        # Every generated model has a dev canary; one without, so that a pull request can add it.
        edit_yaml(manifest(repo, 2), lambda m: m["environments"]["dev"].pop("canary"))
        edit_yaml(manifest(repo, DEDICATED), lambda m: m["serving"].update(isolation="dedicated"))
        pools = lambda s: s["config"]["model-serving:servingPools"]["pools"][0].update(shards=LOCAL_SHARDS)  # noqa: E731
        edit_yaml(repo / "stacks" / "Pulumi.local.yaml", pools)

    return make_repo(tmp_path_factory.mktemp("fleet") / "repo", FLEET, prepare)


@pytest.fixture(scope="module")
def fleet_cache(tmp_path_factory) -> PlanCache:
    """One cache for the module's plans, as CI keeps one between pull requests."""
    return PlanCache(tmp_path_factory.mktemp("plan-cache"))


@pytest.fixture(scope="module")
def full_base(fleet):
    """The full plan's base runs, once for every stack: every change below has the same base commit."""
    taken: dict[str, snapshot.Snapshot] = {}
    original = snapshot.of_revision

    def of_revision(repo, ref, stacks, only_models=None):
        if only_models is not None:
            return original(repo, ref, stacks, only_models)
        commit = git(Path(repo), "rev-parse", ref).strip()
        if commit not in taken:
            taken[commit] = original(repo, ref, ALL_STACKS)
        return snapshot.Snapshot(taken[commit].label, {s: taken[commit].runs[s] for s in stacks})

    return of_revision


@pytest.fixture
def pull_request(fleet, tmp_path) -> Path:
    """A working copy of the fleet at its base commit, for one change."""
    return Path(shutil.copytree(fleet, tmp_path / "pr", symlinks=True))


def manifest(repo: Path, index: int) -> Path:
    return repo / "models" / f"{synthetic_name(index)}.yaml"


# Change kinds, each on its own model (even indexes serve iris, odd ones taxi-fare).


def version_bump(repo: Path) -> None:
    bump_stable(manifest(repo, 0), "prod")


def canary_added(repo: Path) -> None:
    edit_yaml(manifest(repo, 2), lambda m: m["environments"]["dev"].update(canary={"version": 2, "weight": 10}))


def canary_removed(repo: Path) -> None:
    edit_yaml(manifest(repo, 4), lambda m: m["environments"]["dev"].pop("canary"))


def model_added(repo: Path) -> None:
    document = yaml.safe_load(manifest(repo, 1).read_text())
    document |= {"name": "model-new", "artifact": {"path": "bench/model-new"}}
    (repo / "models" / "model-new.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def removed_from_environment(repo: Path) -> None:
    edit_yaml(manifest(repo, 6), lambda m: m["environments"].pop("dev"))


def resources_changed(repo: Path) -> None:
    edit_yaml(manifest(repo, 8), lambda m: m["serving"]["resources"].update(cpu="500m"))


def manifest_renamed(repo: Path) -> None:
    document = yaml.safe_load(manifest(repo, 10).read_text())
    manifest(repo, 10).unlink()
    document["name"] = "model-renamed"
    (repo / "models" / "model-renamed.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def manifest_deleted(repo: Path) -> None:
    manifest(repo, 12).unlink()


# Each kind with the stack it is planned on (dev: canaries and Gateway routes; eks: prod with
# Flagger, node pools and IAM roles) and the models it touches. Every stack is compared once,
# with every kind of change at once, and a renamed and a deleted manifest.
CHANGES: dict[str, tuple[Callable[[Path], None], str, set[str]]] = {
    "version bump": (version_bump, "eks", {"model-0000"}),
    "canary added": (canary_added, "dev", {"model-0002"}),
    "canary removed": (canary_removed, "dev", {"model-0004"}),
    "model added": (model_added, "dev", {"model-new"}),
    "removed from an environment": (removed_from_environment, "dev", {"model-0006"}),
    "resources changed": (resources_changed, "eks", {"model-0008"}),
}
ALL_STACKS = ["dev", "staging", "prod", "eks", "local"]


def co_tenants(report: PlanReport) -> set[str]:
    """Every member of a pool that changes, in any stack."""
    return {m for plan in report.plans for impact in plan.pool_impacts() for m in impact.members}


def without_mode(text: str) -> str:
    # The markdown escapes the mode line's punctuation (`plan\: ...`).
    return "\n".join(
        line for line in text.splitlines() if "plan: " not in line.lower().replace("\\", "") or "Offline" in line
    )


def violations(root: Path, report: PlanReport) -> dict[str, list[str]]:
    return {
        stack: [str(v) for v in check(run, stack_policy_settings(root, stack))]
        for stack, run in report.head_runs.items()
    }


def assert_same_plan(root: Path, incremental_report: PlanReport, full_report: PlanReport) -> None:
    """Steps (with both states and every property diff), summary, blast radius, capacity, the
    rendered reports and the policy verdict: all equal."""
    assert incremental_report.scope.mode == scopes.INCREMENTAL, incremental_report.scope
    assert full_report.scope.mode == scopes.FULL
    documents = [render_json(incremental_report), render_json(full_report)]
    for document in documents:
        document.pop("plan")
    assert documents[0] == documents[1]
    assert [p.summary() for p in incremental_report.plans] == [p.summary() for p in full_report.plans]
    assert incremental_report.blast_radius() == full_report.blast_radius()
    assert incremental_report.base_capacity == full_report.base_capacity
    assert incremental_report.head_capacity == full_report.head_capacity
    assert without_mode(render_text(incremental_report)) == without_mode(render_text(full_report))
    markdown = [without_mode(render_markdown(r, diff_budget=0, budget=0)) for r in (incremental_report, full_report)]
    assert markdown[0] == markdown[1]
    assert violations(root, incremental_report) == violations(root, full_report)


def plan_both_ways(repo: Path, stacks: list[str], cache: PlanCache, full_base, monkeypatch) -> PlanReport:
    # The working copy holds a copy of this very program: run its head in this process (the
    # base still runs in its own worktree and subprocess).
    monkeypatch.setattr(snapshot, "_code_root", lambda: repo.resolve())
    quick = build_report(repo, stacks, "HEAD", cache=cache)
    monkeypatch.setattr(snapshot, "of_revision", full_base)
    slow = build_report(repo, stacks, "HEAD", cache=None, allow_incremental=False)
    monkeypatch.undo()
    assert_same_plan(repo, quick, slow)
    assert slow.has_changes
    return quick


def test_every_kind_at_once_on_every_stack(pull_request, fleet_cache, full_base, monkeypatch):
    touched = set()
    for apply, _, models in [*CHANGES.values(), (manifest_renamed, "", {"model-0010", "model-renamed"})]:
        apply(pull_request)
        touched |= models
    manifest_deleted(pull_request)
    quick = plan_both_ways(pull_request, ALL_STACKS, fleet_cache, full_base, monkeypatch)
    assert quick.scope.changed_models == touched | {"model-0012"}
    # In local, the pools that a renamed or deleted model leaves (or joins) restart their co-tenants.
    assert set(quick.blast_radius()) == touched | {"model-0012"} | co_tenants(quick)


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_incremental_plan_equals_the_full_plan(change, pull_request, fleet_cache, full_base, monkeypatch):
    apply, stack, touched = CHANGES[change]
    apply(pull_request)
    quick = plan_both_ways(pull_request, [stack], fleet_cache, full_base, monkeypatch)
    assert quick.scope.changed_models == touched
    assert set(quick.blast_radius()) == touched


# Serving pools: the local stack packs the fleet into LOCAL_SHARDS shards -------------------------


def pooled_bump(repo: Path) -> None:
    bump_stable(manifest(repo, 0), "local")


def removed_from_local(repo: Path) -> None:
    edit_yaml(manifest(repo, 6), lambda m: m["environments"].pop("local"))


def dedicated_resources_changed(repo: Path) -> None:
    edit_yaml(manifest(repo, DEDICATED), lambda m: m["serving"]["resources"].update(cpu="500m"))


# Each change with its model and whether a pool changes (on which side the model is a member).
POOL_CHANGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "pooled model bumped": (pooled_bump, "model-0000", "both"),
    "model added to a pool": (model_added, "model-new", "head"),
    "model removed from a pool": (removed_from_local, "model-0006", "base"),
    "dedicated model changed": (dedicated_resources_changed, synthetic_name(DEDICATED), "none"),
}


@pytest.mark.parametrize("change", list(POOL_CHANGES))
def test_the_incremental_plan_equals_the_full_plan_with_pools(change, pull_request, tmp_path, full_base, monkeypatch):
    """The pool the changed model is in (before or after) is planned on both sides, every other
    pool comes from the cache, and the plan is the full plan's."""
    apply, model, side = POOL_CHANGES[change]
    cache = RecordingCache(tmp_path / "cache")
    monkeypatch.setattr(snapshot, "_code_root", lambda: pull_request.resolve())
    build_report(pull_request, ["local"], "HEAD", cache=cache)  # the base commit's plan: fills the cache
    monkeypatch.undo()
    apply(pull_request)
    cache = RecordingCache(tmp_path / "cache")
    declared: list[set[str]] = []
    original = snapshot.take

    def take(root, stacks, *args, only_models=None, **kwargs):
        if only_models is not None:  # the incremental plan's runs, not the full plan's
            declared.append(set(only_models))
        return original(root, stacks, *args, only_models=only_models, **kwargs)

    monkeypatch.setattr(snapshot, "take", take)
    quick = plan_both_ways(pull_request, ["local"], cache, full_base, monkeypatch)
    assert quick.scope.changed_models == {model}
    plan = quick.plans[0]
    impacts = plan.pool_impacts()
    assert set(plan.head_outputs["pools"]) == set(plan.base_outputs["pools"])
    assert len(plan.head_outputs["pools"]) == LOCAL_SHARDS
    pool_reads = {path for path in cache.read if path.parent.parent.name == "pool"}
    if side == "none":
        assert impacts == [] and quick.blast_radius() == [model]
        assert declared == [{model}] and len(pool_reads) == LOCAL_SHARDS
        return
    (impact,) = impacts
    assert impact.workload == "restart"
    assert model in {"both": impact.restarting, "head": impact.joining, "base": impact.leaving}[side]
    co_tenants = set(impact.members) - {model}
    assert co_tenants and co_tenants <= set(impact.restarting)
    assert set(quick.blast_radius()) == set(impact.members)
    assert quick.untouched_but_affected() == [] and quick.untouched_pools() == []
    assert f"pool {impact.pool} changes because {model} changed" in render_text(quick)
    # The head declared the changed model (and, for the pool it left, one member: that pool's new
    # membership was never planned); every other pool came from the cache, on both sides.
    assert declared[0] == {model} and len(declared) <= 2 and all(len(d - {model}) <= 1 for d in declared)
    assert len(pool_reads) >= LOCAL_SHARDS - 1 + (side != "base")


@pytest.mark.parametrize("change", ["model added to a pool", "model removed from a pool"])
def test_a_pool_whose_members_change_is_planned_without_a_cache(change, pull_request, full_base, monkeypatch):
    """Cold: the base declares the pool a model joins through one of its other members."""
    apply, model, _ = POOL_CHANGES[change]
    apply(pull_request)
    quick = plan_both_ways(pull_request, ["local"], None, full_base, monkeypatch)
    (impact,) = quick.plans[0].pool_impacts()
    assert model in impact.joining + impact.leaving and len(impact.restarting) > 1


# Which mode runs ---------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.mark.parametrize(
    ("edit", "mode", "named"),
    [
        (lambda r: bump_stable(r / "models/iris.yaml", "prod"), "incremental", "iris"),
        (lambda r: (r / "models/taxi-fare.yaml").unlink(), "incremental", "taxi-fare"),
        (lambda r: (r / "models/iris.yaml").rename(r / "models/iris2.yaml"), "incremental", "iris"),
        (lambda r: (r / "scripts/modelctl/cli.py").write_text("# tooling\n"), "incremental", "no model"),
        (lambda r: (r / "README.md").write_text("docs\n"), "incremental", "no model"),
        (lambda r: (r / "models/manifest.schema.json").write_text("{}\n"), "incremental", "no model"),
        (lambda r: edit_yaml(r / "stacks/Pulumi.prod.yaml", lambda s: s), "full", "stacks/Pulumi.prod.yaml"),
        (lambda r: (r / "infra/program.py").write_text("# changed\n"), "full", "infra/program.py"),
        (lambda r: (r / "infra/new_module.py").write_text("X = 1\n"), "full", "infra/new_module.py"),
        (lambda r: (r / "Pulumi.yaml").write_text("name: x\n"), "full", "Pulumi.yaml"),
        (lambda r: (r / "requirements.txt").write_text("pulumi\n"), "full", "requirements.txt"),
    ],
)
def test_the_scope_of_a_change(small, edit, mode, named):
    edit(small)
    scope = scopes.scope_of_change(small, "HEAD")
    assert scope.mode == mode, scope
    assert named in scope.reason


def test_an_untracked_manifest_is_a_changed_model(small):
    (small / "models/extra.yaml").write_text((small / "models/iris.yaml").read_text().replace("name: iris", "name: x"))
    assert scopes.scope_of_change(small, "HEAD").changed_models == {"extra"}


def test_a_stack_file_change_runs_the_full_plan_and_says_so(small, capsys, tmp_path):
    edit_yaml(
        small / "stacks/Pulumi.dev.yaml", lambda s: s["config"].update({"model-serving:namespace": "models-renamed"})
    )
    code, out, err = plan(small, capsys, "--stack", "dev", "--base", "HEAD", "--cache-dir", str(tmp_path / "c"))
    assert code == 0, err
    assert out.splitlines()[0].startswith("Mode: full plan: the change touches the program")
    assert "stacks/Pulumi.dev.yaml" in out.splitlines()[0]


def test_a_manifest_change_runs_the_incremental_plan_and_says_so(small, capsys, tmp_path):
    bump_stable(small / "models/iris.yaml", "prod")
    code, out, _ = plan(small, capsys, "--stack", "prod", "--base", "HEAD", "--format", "json", "--no-cache")
    assert code == 0
    assert json.loads(out)["plan"] == {
        "mode": "incremental",
        "reason": "only model manifests changed (iris); the program, stack files and requirements are the base's, "
        "so only these models, the serving pools holding them and the platform are planned on both sides",
    }


# Policy checks see whole stacks -------------------------------------------------------------------


def test_a_violation_between_a_changed_and_an_unchanged_model_is_caught(small, capsys, tmp_path):
    """eks (Flagger, 8 c7i.2xlarge at most, 7910m each): iris at 8 x 3.5 CPU, twice during an
    analysis, fills every node alone; taxi-fare, untouched by the change, then fits nowhere."""

    def fill_the_nodes(document: dict) -> None:
        document["environments"]["prod"]["resources"] = {"cpu": "3500m", "cpu_limit": "4", "memory": "256Mi"}
        document["environments"]["prod"]["autoscaling"] = {"min_replicas": 8, "max_replicas": 8}

    cache = ["--cache-dir", str(tmp_path / "cache")]
    code, _, err = plan(small, capsys, "--stack", "eks", "--base", "HEAD", *cache)
    assert code == 0, err  # the base fits, and the cache now holds taxi-fare's resources
    edit_yaml(small / "models/iris.yaml", fill_the_nodes)
    code, out, err = plan(small, capsys, "--stack", "eks", "--base", "HEAD", *cache)
    assert code == 1
    assert "pods-schedule" in err and "taxi-fare" in err, err
    assert "Mode: incremental" not in out  # refused before the report
    assert scopes.scope_of_change(small, "HEAD").changed_models == {"iris"}
    full = plan(small, capsys, "--stack", "eks", "--base", "HEAD", "--full", "--no-cache")
    assert full[0] == 1 and full[2] == err


@pytest.mark.parametrize("cached", [True, False])
def test_the_policy_worker_reports_what_checking_here_reports(small, capsys, tmp_path, monkeypatch, cached):
    """--jobs 2 checks every other stack (eks here) in a forked worker when the cache is warm
    (cold, it would declare the fleet twice): same verdicts, same order, same exit code; a
    worker that fails is made up for."""
    from scripts.modelctl import policy_worker

    def fill_the_nodes(document: dict) -> None:
        document["environments"]["prod"]["resources"] = {"cpu": "3500m", "cpu_limit": "4", "memory": "256Mi"}
        document["environments"]["prod"]["autoscaling"] = {"min_replicas": 8, "max_replicas": 8}

    stacks = ["--stack", "prod", "--stack", "eks", "--stack", "dev", "--base", "HEAD", "--policy"]
    if cached:
        assert plan(small, capsys, *stacks, "--cache-dir", str(tmp_path / "warm"))[0] == 0
    edit_yaml(small / "models/iris.yaml", fill_the_nodes)
    forks = []
    original = policy_worker.PolicyWorker.__init__

    def counted(self, delegated, compute):
        forks.append(list(delegated))
        original(self, delegated, compute)

    monkeypatch.setattr(policy_worker.PolicyWorker, "__init__", counted)
    here = plan(small, capsys, *stacks, "--jobs", "1", "--cache-dir", str(tmp_path / "one"))
    warm = ["--cache-dir", str(tmp_path / ("warm" if cached else "two"))]
    there = plan(small, capsys, *stacks, "--jobs", "2", *warm)
    assert forks == ([["eks"]] if cached else [])
    assert here[0] == there[0] == 1
    assert here[2] == there[2] and "policy: stack eks: [mandatory] pods-schedule" in there[2]
    assert "policy: stack prod:" in there[2] and "policy: stack dev:" in there[2]  # the advisory ones
    if cached:
        # A worker that dies: its stacks are checked here, and the output is the same.
        monkeypatch.setattr(policy_worker, "_run_worker", lambda writer, stacks, compute: os._exit(3))
        assert plan(small, capsys, *stacks, "--jobs", "2", *warm)[::2] == (here[0], here[2])
        assert len(forks) == 2


@pytest.mark.parametrize("child", ["keeps", "dies"])
def test_a_cold_cache_is_filled_by_two_processes_with_the_same_report(small, tmp_path, monkeypatch, child):
    """--jobs 2 on a cold cache: a forked child takes some of the stacks, one at a time, and keeps
    their pieces in the cache, and this process reads them back: the report is the one process's,
    and the cache then holds every stack (the next plan forks nothing). A child that dies leaves
    its stacks to this process, with the same report."""
    from scripts.modelctl import forked

    bump_stable(small / "models/iris.yaml", "prod")
    stacks = ["prod", "eks", "dev", "staging"]
    # The copy holds this very program: its head runs in this process, where the fork happens.
    monkeypatch.setattr(snapshot, "_code_root", lambda: small.resolve())
    # Other tests' servers leave threads in this process, where `modelctl plan` has none
    # (test_an_offline_run_leaves_no_thread_behind); they never run in the child.
    monkeypatch.setattr(forked, "available", lambda: True)
    one = build_report(small, stacks, "HEAD", cache=PlanCache(tmp_path / "one"), jobs=1)
    declared_here: list[str] = []
    original_take = snapshot.take

    def take(root, names, **kwargs):
        if set(kwargs.get("only_models") or ()) - {"iris"}:  # what lacked pieces; the first pass: iris only
            declared_here.extend(names)
        return original_take(root, names, **kwargs)

    forks = []
    original_fork = forked.Forked.__init__

    def fork(self, task):
        forks.append(task)
        original_fork(self, task if child == "keeps" else lambda: os._exit(3))

    monkeypatch.setattr(snapshot, "take", take)
    monkeypatch.setattr(forked.Forked, "__init__", fork)
    two = build_report(small, stacks, "HEAD", cache=PlanCache(tmp_path / "two"), jobs=2)
    assert len(forks) == 1
    assert render_json(two) == render_json(one)
    assert render_markdown(two) == render_markdown(one)
    if child == "keeps":
        assert set(declared_here) < set(stacks) and len(declared_here) == len(set(declared_here))
    else:
        assert sorted(declared_here) == sorted(stacks)
    monkeypatch.setattr(forked.Forked, "__init__", lambda self, task: pytest.fail("nothing was missing"))
    three = build_report(small, stacks, "HEAD", cache=PlanCache(tmp_path / "two"), jobs=2)
    assert render_json(three) == render_json(one)


def test_a_failing_plan_stops_its_filling_child(small, tmp_path, monkeypatch):
    """The plan fails while its child still declares: the child is stopped and reaped, so
    nothing of a failed plan runs on behind its back."""
    import time

    from scripts.modelctl import forked

    monkeypatch.setattr(snapshot, "_code_root", lambda: small.resolve())
    monkeypatch.setattr(forked, "available", lambda: True)  # as above
    parent = os.getpid()
    original_take = snapshot.take

    def take(root, names, **kwargs):
        if set(kwargs.get("only_models") or ()):  # declaring what the cache lacks
            if os.getpid() != parent:
                time.sleep(3600)  # the child: busy for good
            raise RuntimeError("the plan fails here")
        return original_take(root, names, **kwargs)

    children = []
    original_fork = forked.Forked.__init__

    def fork(self, task):
        original_fork(self, task)
        children.append((self, self.pid))

    monkeypatch.setattr(snapshot, "take", take)
    monkeypatch.setattr(forked.Forked, "__init__", fork)
    with pytest.raises(RuntimeError, match="the plan fails here"):
        build_report(small, ["prod", "dev"], "HEAD", cache=PlanCache(tmp_path / "cache"), jobs=2)
    ((child, pid),) = children
    assert child.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_an_offline_run_leaves_no_thread_behind():
    """What lets a plan fork: after a run, the process has its main thread only, and no more
    open files than before (infra/offline.py `_own_executor`)."""
    import subprocess
    import sys

    code = (
        "import os, threading\n"
        "from pathlib import Path\n"
        "from infra.offline import run_stack\n"
        "from scripts.modelctl import forked\n"
        "run_stack(Path('.'), 'local', short_lived=True)\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "run_stack(Path('.'), 'dev', short_lived=True)\n"
        "print(threading.active_count(), forked.available(), len(os.listdir('/proc/self/fd')) - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True", "0"]


def test_a_claim_is_taken_once():
    from scripts.modelctl import forked

    with forked.Claims() as claims:
        assert [claims.take(i) for i in (0, 1, 0, 1, 2)] == [True, True, False, False, True]
        directory = claims.directory
    assert not os.path.exists(directory)


# The plan cache ---------------------------------------------------------------------------------


def test_a_second_run_hits_the_cache_with_an_identical_report(small, tmp_path):
    bump_stable(small / "models/iris.yaml", "prod")
    stacks = ["prod", "dev"]
    cache = PlanCache(tmp_path / "cache")
    first = build_report(small, stacks, "HEAD", cache=cache)
    assert cache.hits == 0
    second_cache = PlanCache(tmp_path / "cache")
    second = build_report(small, stacks, "HEAD", cache=second_cache)
    assert second_cache.misses == 0 and second_cache.hits > 0
    assert render_json(first) == render_json(second)
    assert render_markdown(first) == render_markdown(second)


class RecordingCache(PlanCache):
    """A plan cache that remembers which entry files it read."""

    def __init__(self, directory: Path):
        super().__init__(directory)
        self.read: list[Path] = []

    def get(self, kind: str, key: str):
        value = super().get(kind, key)
        if value is not None:
            self.read.append(self._path(kind, key))
        return value


def test_a_change_of_any_key_input_misses(small, tmp_path, monkeypatch):
    stacks = ["prod"]
    directory = tmp_path / "cache"
    build_report(small, stacks, "HEAD", cache=PlanCache(directory))

    def after(change) -> tuple[int, int]:
        """(entries from before `change` that the next plan read, entries it missed)."""
        before = set(directory.rglob("*.json"))
        change()
        cache = RecordingCache(directory)
        build_report(small, stacks, "HEAD", cache=cache)
        return len([path for path in cache.read if path in before]), cache.misses

    # A manifest: nothing missed. The head declares the changed model; the unchanged model's
    # entry hits, and the base side is rebuilt from what the first plan stored (the stack's
    # skeleton and iris's entry at its base content), without running the base.
    assert after(lambda: bump_stable(small / "models/iris.yaml", "prod")) == (3, 0)
    assert after(lambda: None) == (3, 0)
    # The interpreter or an installed distribution: no entry from before is used.
    monkeypatch.setattr(plancache, "environment_fingerprint", lambda: "another environment")
    assert after(lambda: None)[0] == 0
    monkeypatch.undo()
    # The program (a stack file, committed with the bump): no entry from before is used.
    edit_yaml(small / "stacks/Pulumi.prod.yaml", lambda s: s["config"].update({"model-serving:namespace": "ns2"}))
    assert after(lambda: git(small, "commit", "-qam", "another namespace"))[0] == 0


def test_entries_read_back_as_json_loads_reads_them(small, tmp_path):
    """The cache reads entries with pydantic-core's JSON parser: the same values, type for type."""
    import pydantic_core

    bump_stable(small / "models/iris.yaml", "prod")
    build_report(small, ["prod", "eks"], "HEAD", cache=PlanCache(tmp_path / "cache"))
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert {entry.parent.parent.name for entry in entries} == {"model", "skeleton"}
    for entry in entries:
        content = entry.read_bytes()
        assert plancache._identical(pydantic_core.from_json(content), json.loads(content)), entry


def test_a_model_entry_is_keyed_by_program_stack_model_and_manifest():
    store = incremental.PieceStore(None, "program")
    key = store.key("prod", "iris", "blob")
    others = [
        store.key("dev", "iris", "blob"),
        store.key("prod", "taxi-fare", "blob"),
        store.key("prod", "iris", "another blob"),
        incremental.PieceStore(None, "another program").key("prod", "iris", "blob"),
    ]
    assert key == store.key("prod", "iris", "blob") and key not in others and len(set(others)) == 4


def test_a_corrupt_entry_is_ignored_and_rewritten(small, tmp_path):
    bump_stable(small / "models/iris.yaml", "prod")
    directory = tmp_path / "cache"
    first = build_report(small, ["prod"], "HEAD", cache=PlanCache(directory))
    entries = sorted(directory.rglob("*.json"))
    for entry in entries:
        entry.write_text('{"format": 1, "key": "truncat')
    cache = PlanCache(directory)
    again = build_report(small, ["prod"], "HEAD", cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)  # taxi-fare's resources and the base run
    assert render_json(again) == render_json(first)
    assert all(json.loads(entry.read_text())["key"] for entry in entries)


def test_a_base_program_without_subsets_is_planned_whole(small):
    """A revision older than `only_models` declares every model; the plan keeps what it declared."""
    offline = small / "infra" / "offline.py"
    text = offline.read_text()
    offline.write_text(
        text.replace("    only_models: Collection[str] | None = None,\n) -> OfflineRun:", ") -> OfflineRun:").replace(
            "    from infra import program\n", "    from infra import program\n\n    only_models = None\n", 1
        )
    )
    git(small, "commit", "-qam", "an older program")
    taken = snapshot.of_revision(small, "HEAD", ["prod"], only_models={"iris"})
    assert not taken.subset
    assert {piece.name for piece in incremental.pieces(taken.runs["prod"])} == {"iris", "taxi-fare"}
    whole = incremental.assemble(taken.runs["prod"], {})
    assert len(whole.resources) == len(taken.runs["prod"].resources)


# The base side from what the previous plan stored ------------------------------------------------


def test_the_next_pull_request_plans_its_base_from_the_cache_without_running_it(
    fleet, tmp_path, full_base, monkeypatch
):
    """CI plans the base commit when it merges (or any plan whose head it was): the next pull
    request's base side comes from that plan's skeletons and models, and the plan still equals
    the full plan."""
    repo = Path(shutil.copytree(fleet, tmp_path / "repo", symlinks=True))
    cache = PlanCache(tmp_path / "cache")
    monkeypatch.setattr(snapshot, "_code_root", lambda: repo.resolve())
    build_report(repo, ALL_STACKS, "HEAD", cache=cache)
    version_bump(repo)
    canary_removed(repo)
    git(repo, "commit", "-qam", "the pull request")

    def no_base_run(*args, **kwargs):
        raise AssertionError("the base side ran instead of coming from the plan cache")

    monkeypatch.setattr(snapshot, "of_revision_here", no_base_run)
    second = PlanCache(tmp_path / "cache")
    quick = build_report(repo, ALL_STACKS, "HEAD~1", cache=second)
    assert second.misses == 0
    monkeypatch.setattr(snapshot, "of_revision", full_base)
    slow = build_report(repo, ALL_STACKS, "HEAD~1", cache=None, allow_incremental=False)
    assert_same_plan(repo, quick, slow)
    assert set(quick.blast_radius()) == {"model-0000", "model-0004"} | co_tenants(quick)


def test_a_skeleton_is_keyed_by_program_stack_and_every_manifest():
    store = incremental.PieceStore(None, "program")
    manifests = {"iris": "a", "taxi-fare": "b"}
    key = store.skeleton_key("prod", manifests)
    others = [
        store.skeleton_key("dev", manifests),
        store.skeleton_key("prod", {"iris": "a", "taxi-fare": "c"}),
        store.skeleton_key("prod", {"iris": "a"}),
        store.skeleton_key("prod", {"iris": "a", "taxi-fare": "b", "new": "d"}),
        incremental.PieceStore(None, "another program").skeleton_key("prod", manifests),
    ]
    assert key == store.skeleton_key("prod", dict(reversed(manifests.items())))
    assert key not in others and len(set(others)) == len(others)


def test_a_base_whose_changed_model_was_never_stored_runs(small, tmp_path, monkeypatch):
    """A skeleton alone is not enough: the changed model's base resources must be stored too."""
    cache = PlanCache(tmp_path / "cache")
    build_report(small, ["prod"], "HEAD", cache=cache)
    for entry in (tmp_path / "cache" / "model").rglob("*.json"):
        entry.unlink()
    bump_stable(small / "models/iris.yaml", "prod")
    ran = []
    original = snapshot.of_revision

    def of_revision(*args, **kwargs):
        ran.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(snapshot, "of_revision", of_revision)
    report = build_report(small, ["prod"], "HEAD", cache=PlanCache(tmp_path / "cache"))
    assert len(ran) == 1
    assert report.blast_radius() == ["iris"]


# Parsed manifests in the plan cache ----------------------------------------------------------------


@pytest.fixture
def documents(tmp_path, monkeypatch):
    """A fresh process's view: nothing parsed in memory; parsed documents kept in a plan cache."""
    from infra.spec import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_PARSED", type(manifest_module._PARSED)())
    monkeypatch.setattr(manifest_module, "_BY_STAT", type(manifest_module._BY_STAT)())
    store = plancache.ManifestDocuments(PlanCache(tmp_path / "documents"))
    manifest_module.keep_documents_in(store)
    yield store
    manifest_module.keep_documents_in(None)


def test_a_manifest_is_parsed_once_across_processes(small, documents, monkeypatch):
    from infra.spec import manifest as manifest_module

    first = manifest_module.load_manifests(small)
    manifest_module.forget_parsed()

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(manifest_module, "parse_yaml", no_parsing)
    assert manifest_module.load_manifests(small) == first
    # Other content: parsed (and validated) again.
    manifest_module.forget_parsed()
    bump_stable(small / "models/iris.yaml", "prod")
    with pytest.raises(AssertionError, match="parsed again"):
        manifest_module.load_manifests(small)


def test_a_document_is_kept_only_when_it_reads_back_exactly(documents):
    import datetime

    for document in ({"when": datetime.date(2026, 1, 1)}, {"x": float("nan")}, {"b": b"x"}, {"s": {1, 2}}):
        documents.put(b"content", document)
        assert documents.get(b"content") is None
    # Number keys (`versions`), booleans, floats that look like integers: type for type.
    kept = {"name": "iris", "versions": {1: {"f": 1.0}, 2: [True, None, 3]}, "\x00pairs": [], True: "yes"}
    documents.put(b"content", kept)
    back = documents.get(b"content")
    assert back == kept
    assert [type(k) for k in back["versions"]] == [int, int] and type(back["versions"][1]["f"]) is float
    assert type(back["versions"][2][0]) is bool and list(back)[-1] is True


def test_a_kept_document_is_keyed_by_content_and_the_reading_code(documents, monkeypatch):
    documents.put(b"name: iris\n", {"name": "iris"})
    assert documents.get(b"name: iris\n") == {"name": "iris"}
    assert documents.get(b"name: iris \n") is None
    monkeypatch.setattr(documents, "reader", "another yamlio.py")
    assert documents.get(b"name: iris\n") is None


def test_a_hostile_manifest_is_refused_with_documents_kept(small, documents):
    from infra.spec import manifest as manifest_module
    from infra.spec.errors import ConfigError

    (small / "models/iris.yaml").write_text("a: &x [1]\nb: *x\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="anchors and aliases"):
            manifest_module.load_manifests(small)
    assert documents.get((small / "models/iris.yaml").read_bytes()) is None
    assert len(list(documents.cache.directory.rglob("*.json"))) == 1  # taxi-fare's


# Pruning: the default branch's cache stays one fleet's size ------------------------------------------


def test_pruning_keeps_exactly_what_the_next_plan_reads(small, tmp_path, capsys):
    directory = tmp_path / "cache"
    bump_stable(small / "models/iris.yaml", "prod")
    assert plan(small, capsys, "--stack", "prod", "--base", "HEAD", "--cache-dir", str(directory))[0] == 0
    git(small, "commit", "-qam", "bump")
    # A program change: every entry from before is stale.
    (small / "infra" / "unused.py").write_text("UNUSED = 1\n")
    git(small, "add", "-A")
    git(small, "commit", "-qm", "a program change")
    before = set(directory.rglob("*.json"))
    (directory / "model" / ".left-over.123.tmp").write_text("{")
    code, _, err = plan(
        small, capsys, "--stack", "prod", "--base", "HEAD", "--cache-dir", str(directory), "--prune-cache"
    )
    assert code == 0, err
    kept = set(directory.rglob("*.json"))
    assert f"plan cache {directory}: kept {len(kept)} entries, removed {len(before - kept) + 1}" in err
    assert not list(directory.rglob("*.tmp"))
    # Entries of the old program are gone; the manifests' parsed documents (keyed by content
    # and the reading code, not the program) are still used, and kept.
    assert {p.parent.parent.name for p in kept & before} == {"manifest"} and len(kept & before) == 2
    # What is left is exactly what the same plan needs: all hits, nothing missing, nothing unread.
    again = RecordingCache(directory)
    build_report(small, ["prod"], "HEAD", cache=again)
    assert again.misses == 0 and set(again.read) == {p for p in kept if p.parent.parent.name != "manifest"}


def test_pruning_needs_the_cache(small, capsys):
    code, _, err = plan(small, capsys, "--stack", "prod", "--no-cache", "--prune-cache")
    assert code == 1 and "--prune-cache needs the cache" in err


def test_a_policy_worker_delivers_complete_verdicts_or_nothing(monkeypatch):
    import time

    from scripts.modelctl import policy_worker

    worker = policy_worker.PolicyWorker(["a", "b"], lambda stacks: {s: [["mandatory", f"{s} broke"]] for s in stacks})
    assert worker.result() == {"a": [("mandatory", "a broke")], "b": [("mandatory", "b broke")]}
    # A stack missing, a crash, an answer that is not JSON: nothing (the plan checks them itself).
    assert policy_worker.PolicyWorker(["a", "b"], lambda stacks: {"a": []}).result() is None
    assert policy_worker.PolicyWorker(["a"], lambda stacks: 1 / 0).result() is None
    # A stuck worker is stopped once the wait is over, and reaped.
    monkeypatch.setattr(policy_worker, "MIN_WAIT_SECONDS", 0.5)
    stuck = policy_worker.PolicyWorker(["a"], lambda stacks: time.sleep(3600))
    pid = stuck.pid
    assert stuck.result() is None and stuck.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_manifest_unchanged_since_it_was_read_is_not_read_again_in_the_process(small, monkeypatch):
    """A plan lists models/ once per stack; a manifest whose stat (device, inode, size, times)
    is the one it had when read, long enough after its last change, is not read again. A
    same-size rewrite with its modification time put back is still seen (the change time)."""
    from infra.spec import manifest as manifest_module

    manifest_module.forget_parsed()
    reads: list[str] = []
    read_bounded = manifest_module.read_bounded

    def counted(path, display, *args):
        reads.append(display)
        return read_bounded(path, display, *args)

    monkeypatch.setattr(manifest_module, "read_bounded", counted)
    iris = small / "models/iris.yaml"
    first = manifest_module.load_manifests(small)
    # Just written (the fixture copied it): its stat is not trusted yet, so it is read again.
    assert manifest_module.load_manifests(small) == first
    assert reads.count("models/iris.yaml") == 2
    monkeypatch.setattr(manifest_module, "RACY_NS", -(10**12))  # as if every file were old
    manifest_module.load_manifests(small)
    assert reads.count("models/iris.yaml") == 3
    assert manifest_module.load_manifests(small) == first
    assert reads.count("models/iris.yaml") == 3  # trusted: not read
    before = iris.stat()
    text = iris.read_text()
    start = text.index("description: ") + len("description: ")
    rewritten = text[:start] + "_" + text[start + 1 :]
    assert len(rewritten) == len(text) and rewritten != text
    iris.write_text(rewritten)
    os.utime(iris, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert iris.stat().st_size == before.st_size and iris.stat().st_mtime_ns == before.st_mtime_ns
    again = {m.name: m for m in manifest_module.load_manifests(small)}
    assert reads.count("models/iris.yaml") == 4
    assert again["iris"].description.startswith("_")
    manifest_module.forget_parsed()
