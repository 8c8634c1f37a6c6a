"""The offline plan against a base revision, in throwaway git repositories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from scripts.modelctl.cli import main
from scripts.project_copy import copy_project_files
from tests.conftest import ROOT, STACKS, edit_yaml

PLAN_SCHEMA = json.loads((ROOT / "scripts" / "modelctl" / "plan.schema.json").read_text())
SNAPSHOTS = Path(__file__).parent / "snapshots"
# What a revision needs to be planned with its own program.
TREE = ("infra", "scripts", "models", "stacks", "Pulumi.yaml", "__main__.py")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ
        | {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding this project's program, manifests and stacks, one commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project_files(TREE, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def plan(repo: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(repo), "plan", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(repo: Path, capsys, *args: str) -> dict:
    code, out, err = plan(repo, capsys, "--format", "json", *args)
    assert code in (0, 2), err
    document = json.loads(out)
    jsonschema.validate(document, PLAN_SCHEMA)
    return document


def ops(stack_plan: dict) -> dict[str, str]:
    """URN suffix (type::name) -> op."""
    return {s["urn"].split("::", 2)[2]: s["op"] for s in stack_plan["steps"]}


def changed(stack_plan: dict) -> dict[str, str]:
    return {urn: op for urn, op in ops(stack_plan).items() if op != "same"}


def owned_by(repo: Path, capsys, stack: str, model: str) -> list[dict]:
    """Steps of `model`'s resources (component included) in a plan of `stack` without a base."""
    steps = plan_json(repo, capsys, "--stack", stack)["steps"]
    return [s for s in steps if s["urn"].endswith(f"ModelDeployment::{model}") or _parent_is(s, model)]


def _parent_is(step: dict, model: str) -> bool:
    parent = step["newState"].get("parent", "")
    return parent.endswith(f"model-serving:model:ModelDeployment::{model}")


def bump_iris_prod(repo: Path) -> None:
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 3}))


def test_version_bump_replaces_the_config_map_and_updates_the_deployment_only(repo, capsys):
    bump_iris_prod(repo)
    git(repo, "commit", "-qam", "iris: serve version 3 in prod")
    document = plan_json(repo, capsys, "--all-stacks", "--base", "HEAD~1")
    prod = document["stacks"]["prod"]
    assert changed(prod) == {
        "model-serving:model:ModelDeployment$kubernetes:core/v1:ConfigMap::iris-config": "replace",
        "model-serving:model:ModelDeployment$kubernetes:apps/v1:Deployment::iris-deployment": "update",
    }
    config_step = next(s for s in prod["steps"] if s["urn"].endswith("ConfigMap::iris-config"))
    assert config_step["replaceReasons"] == ["data"]
    assert config_step["detailedDiff"] == {'data["models.config"]': {"kind": "update-replace", "inputDiff": True}}
    deployment_step = next(s for s in prod["steps"] if s["urn"].endswith("Deployment::iris-deployment"))
    assert deployment_step["diffReasons"] == ["spec"]
    assert "spec.template.spec.initContainers[0].args[0]" in deployment_step["detailedDiff"]
    assert all(not k.startswith("spec.selector") for k in deployment_step["detailedDiff"])
    total = len(plan_json(repo, capsys, "--stack", "prod")["steps"])
    assert prod["changeSummary"] == {"same": total - 2, "update": 1, "replace": 1}
    from infra.spec.settings import load_stack_settings

    for stack in STACKS:
        if load_stack_settings(ROOT, stack).environment != "prod":
            assert changed(document["stacks"][stack]) == {}, stack


def test_adding_a_model_only_creates(repo, capsys):
    document = yaml.safe_load((repo / "models" / "iris.yaml").read_text())
    document["name"] = "iris-xl"
    document["artifact"]["path"] = "iris-xl"
    (repo / "models" / "iris-xl.yaml").write_text(yaml.safe_dump(document))
    prod = plan_json(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert set(changed(prod).values()) == {"create"}
    assert all("iris-xl" in urn for urn in changed(prod))
    # As many as iris has: the component and its children.
    assert prod["changeSummary"]["create"] == len(owned_by(repo, capsys, "prod", "iris"))


def test_removing_a_model_from_an_environment_only_deletes(repo, capsys):
    edit_yaml(repo / "models" / "taxi-fare.yaml", lambda d: d["environments"].pop("staging"))
    git(repo, "commit", "-qam", "taxi-fare leaves staging")
    staging = plan_json(repo, capsys, "--stack", "staging", "--base", "main~1")
    assert set(changed(staging).values()) == {"delete"}
    assert all("taxi-fare" in urn for urn in changed(staging))
    git(repo, "checkout", "-q", "main~1", "--", "models/taxi-fare.yaml")
    assert staging["changeSummary"]["delete"] == len(owned_by(repo, capsys, "staging", "taxi-fare"))
    git(repo, "checkout", "-q", "main", "--", "models/taxi-fare.yaml")
    prod = plan_json(repo, capsys, "--stack", "prod", "--base", "main~1")
    assert changed(prod) == {}


def test_a_program_change_puts_every_model_in_the_blast_radius(repo, capsys):
    workload = repo / "infra" / "model" / "workload.py"
    workload.write_text(
        workload.read_text().replace("TERMINATION_GRACE_SECONDS = 45", "TERMINATION_GRACE_SECONDS = 60")
    )
    code, out, _ = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--format", "markdown")
    assert code == 0
    assert "**Blast radius:** `iris`, `taxi-fare`" in out
    assert out.count("> [!WARNING]") == 2
    assert "`iris` changes although this change does not touch its manifest" in out
    document = plan_json(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert {urn.rsplit("::", 1)[1] for urn in changed(document)} == {
        "iris-deployment",
        "taxi-fare-deployment",
    }


def test_an_unchanged_tree_has_no_changes_and_exits_0(repo, capsys):
    code, out, _ = plan(repo, capsys, "--all-stacks", "--base", "HEAD", "--detailed-exitcode")
    assert code == 0
    assert out.count("no changes") == len(STACKS)


def test_detailed_exitcode_is_2_on_changes(repo, capsys):
    bump_iris_prod(repo)
    code, out, _ = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--detailed-exitcode")
    assert code == 2
    assert "1 to update, 1 to replace, " in out and " unchanged" in out
    assert "+- kubernetes:core/v1:ConfigMap" in out


def test_without_a_base_every_resource_is_a_create(repo, capsys):
    prod = plan_json(repo, capsys, "--stack", "prod")
    assert set(ops(prod).values()) == {"create"}
    assert all("oldState" not in s for s in prod["steps"])


def test_a_broken_head_fails_with_the_validation_errors(repo, capsys):
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 99}))
    code, out, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert code == 1
    assert "models/iris.yaml: environments.prod.stable: Got 99" in err
    assert out == ""


def test_a_broken_base_names_the_revision(repo, capsys):
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 99}))
    git(repo, "commit", "-qam", "broken")
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 2}))
    code, _, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert code == 1
    assert "base HEAD: models/iris.yaml: environments.prod.stable: Got 99" in err


def test_an_unknown_base_is_a_clean_error(repo, capsys):
    code, _, err = plan(repo, capsys, "--stack", "prod", "--base", "no-such-branch")
    assert code == 1
    assert "base no-such-branch: not a commit" in err
    assert "Traceback" not in err


def test_secret_config_values_never_appear(repo, capsys):
    ciphertext = "v1:Zm9vYmFyLXRoaXMtaXMtYS1zZWNyZXQ="
    edit_yaml(
        repo / "stacks" / "Pulumi.prod.yaml", lambda d: d["config"].update({"aws:secretKey": {"secure": ciphertext}})
    )
    for fmt in ("json", "markdown", "text"):
        code, out, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--format", fmt)
        assert code == 0, err
        assert ciphertext not in out + err
    document = plan_json(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert document["config"]["aws:secretKey"] == "[secret]"


def test_capacity_change_is_reported_before_and_after(repo, capsys):
    edit_yaml(
        repo / "models" / "iris.yaml",
        lambda d: d["environments"]["prod"].update({"autoscaling": {"min_replicas": 3, "max_replicas": 8}}),
    )
    code, out, _ = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--format", "markdown")
    assert code == 0
    # iris requests 250m CPU and 256Mi per pod.
    assert "| `iris` | 2–6 → 3–8 | 0.5–1.5 → 0.75–2 | 512Mi–1.5Gi → 768Mi–2Gi |" in out
    assert "| **total** |" in out


def test_markdown_comment_matches_the_snapshot(repo, capsys):
    bump_iris_prod(repo)
    code, out, _ = plan(repo, capsys, "--stack", "prod", "--stack", "dev", "--base", "HEAD", "--format", "markdown")
    assert code == 0
    snapshot = SNAPSHOTS / "plan-iris-bump.md"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(out)
    assert out == snapshot.read_text(), "run with UPDATE_SNAPSHOTS=1 after an intended change"


def test_plan_renders_each_stack_into_its_own_directory(repo, capsys, tmp_path):
    out = tmp_path / "render"
    code, _, err = plan(repo, capsys, "--stack", "prod", "--stack", "dev", "--render", str(out))
    assert code == 0, err
    assert (out / "prod" / "iris").is_dir() and (out / "dev" / "taxi-fare").is_dir()


def test_markdown_leaves_out_diffs_past_the_budget(project, runs):
    from infra.offline import run_stack
    from scripts.modelctl.plan import plan_stack
    from scripts.modelctl.report import PlanReport, render_markdown

    bump_iris_prod(project)
    report = PlanReport([plan_stack("prod", runs["prod"], run_stack(project, "prod"))], "main", "working tree")
    full = render_markdown(report, diff_budget=0)
    assert full.count("<details>") == 2
    short = render_markdown(report, diff_budget=500)
    assert short.count("<details>") < 2
    assert "YAML diff" in short and "left out" in short


def test_bench_prints_its_table():
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "scripts.bench_plan", "--sizes", "3", "--pr-sizes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[1:3]
    assert header.split() == ["models", "seconds", "resources", "ms/resource", "peak", "MiB", "imports", "s"]
    models, seconds, resources, per_resource, peak, _ = row.split()
    assert float(seconds) > 0
    # 13 per model under prod's Flagger and monitoring; the provider, the platform and its 4
    # resources, and Flagger's load tester (ConfigMap, Deployment, PDB, Service, NetworkPolicy);
    # and a GRPCRoute for each of the two copies of iris, which serves gRPC.
    assert models == "3" and int(resources) == 3 * 13 + 6 + 5 + 2
    assert float(per_resource) > 0 and float(peak) > 0
    assert "target: under 5.0 ms per resource" in result.stdout


def test_bench_times_the_pull_request_incrementally_and_in_full():
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "scripts.bench_plan", "--sizes", "--pr-sizes", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("4 ")]
    assert [row[-2:] for row in rows] == [["Incremental", "plan"]] * 3 + [["Full", "plan"]]
    assert " ".join(rows[2]).startswith("4 the same, one process (--jobs 1)")
    assert all(float(row[-6]) > 0 and float(row[-4]) >= float(row[-5]) > 0 and row[-3] == "0" for row in rows)
