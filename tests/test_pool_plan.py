"""The plan of a change to a pooled model: its pool changes, and every co-tenant is named as restarting."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.modelctl.plan import ComponentKind, Op, PoolImpact, Step
from tests.conftest import edit_yaml
from tests.test_plan import changed, git, plan, plan_json, repo  # noqa: F401 (the `repo` fixture)

POOL = "shared-0"


def bump_iris_local(root: Path) -> None:
    edit_yaml(root / "models" / "iris.yaml", lambda d: d["environments"]["local"].update({"stable": 2}))


@pytest.fixture
def bumped(repo: Path) -> Path:  # noqa: F811
    bump_iris_local(repo)
    git(repo, "commit", "-qam", "iris: serve version 2 in local")
    return repo


def test_a_pooled_bump_replaces_the_pools_config_map_and_updates_its_deployment(bumped, capsys):
    local = plan_json(bumped, capsys, "--stack", "local", "--base", "HEAD~1")
    assert changed(local) == {
        "model-serving:model:ServingPool$kubernetes:core/v1:ConfigMap::shared-0-config": "replace",
        "model-serving:model:ServingPool$kubernetes:apps/v1:Deployment::shared-0-deployment": "update",
    }
    assert local["blastRadius"] == ["iris", "taxi-fare"]
    assert local["poolChanges"] == [
        {
            "pool": POOL,
            "workload": "restart",
            "members": ["iris", "taxi-fare"],
            "restarting": ["iris", "taxi-fare"],
            "joining": [],
            "leaving": [],
            "summary": "pool shared-0: 2 models restart (iris, taxi-fare)",
            "causedBy": ["iris"],
        }
    ]


def test_text_names_the_co_tenant_and_blames_the_bumped_member(bumped, capsys):
    code, out, err = plan(bumped, capsys, "--stack", "local", "--base", "HEAD~1")
    assert code == 0, err
    assert "  blast radius: iris, taxi-fare\n" in out
    assert "  pool shared-0: 2 models restart (iris, taxi-fare)\n" in out
    assert "  pool shared-0 changes because iris changed\n" in out
    assert "warning" not in out


def test_markdown_names_the_co_tenant_and_blames_the_bumped_member(bumped, capsys):
    code, out, err = plan(bumped, capsys, "--stack", "local", "--base", "HEAD~1", "--format", "markdown")
    assert code == 0, err
    assert "**Blast radius:** `iris`, `taxi-fare`" in out
    assert (
        "- pool `shared-0`: 2 models restart (`iris`, `taxi-fare`). Pool `shared-0` changes because `iris` changed."
        in out
    )
    assert "#### Pool `shared-0`" in out
    assert "[!WARNING]" not in out


def test_a_program_change_that_restarts_a_pool_warns_about_the_pool_not_its_members(repo, capsys):  # noqa: F811
    workload = repo / "infra" / "model" / "workload.py"
    workload.write_text(
        workload.read_text().replace("TERMINATION_GRACE_SECONDS = 45", "TERMINATION_GRACE_SECONDS = 60")
    )
    code, out, err = plan(repo, capsys, "--stack", "local", "--base", "HEAD", "--format", "markdown")
    assert code == 0, err
    assert "- pool `shared-0`: 2 models restart (`iris`, `taxi-fare`)." in out
    assert out.count("> [!WARNING]") == 1
    assert "Pool `shared-0` of stack `local` changes although this change does not touch any of its members'" in out


def _step(kind: str, op: Op, paths: tuple[str, ...] = ()) -> Step:
    from scripts.modelctl.plan import DiffKind, PropertyDiff

    diffs = tuple(PropertyDiff(p, DiffKind.update) for p in paths)
    return Step(op, f"urn::{kind}", kind, f"{POOL}-x", POOL, ComponentKind.pool, None, None, diffs)


def test_an_autoscaler_change_restarts_no_member():
    scaler = _step("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", Op.update, ("spec.maxReplicas",))
    impact = PoolImpact(POOL, ("iris", "taxi-fare"), ("iris", "taxi-fare"), (scaler,))
    assert impact.workload == "keep" and impact.restarting == []
    assert impact.describe() == (
        "pool shared-0: no model restarts (HorizontalPodAutoscaler updated); 2 models keep serving (iris, taxi-fare)"
    )
    # The Deployment's replica count is not its pod template: no restart either.
    replicas = _step("kubernetes:apps/v1:Deployment", Op.update, ("spec.replicas",))
    assert PoolImpact(POOL, ("iris",), ("iris",), (replicas,)).workload == "keep"
    template = _step("kubernetes:apps/v1:Deployment", Op.update, ("spec.template.spec.containers[0].image",))
    assert PoolImpact(POOL, ("iris",), ("iris",), (template,)).describe() == "pool shared-0: 1 model restarts (iris)"
