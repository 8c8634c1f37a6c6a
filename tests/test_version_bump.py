"""A served-version bump touches exactly one model's ConfigMap and pod template, in one stack."""

from __future__ import annotations

from infra.offline import run_stack
from infra.spec.settings import load_stack_settings
from tests.conftest import ROOT, STACKS, edit_yaml
from tests.test_program import CONFIG_MAP, DEPLOYMENT


def changed_urns(before, after) -> set[str]:
    old, new = before.by_urn(), after.by_urn()
    assert set(old) == set(new), "a bump neither adds nor removes resources"
    return {urn for urn in old if old[urn].state != new[urn].state or old[urn].inputs != new[urn].inputs}


def test_bumping_one_served_version_changes_only_that_models_config_and_pod_template(project, runs):
    def bump(manifest):
        assert manifest["environments"]["prod"]["stable"] == 2
        manifest["environments"]["prod"]["stable"] = 3

    edit_yaml(project / "models" / "iris.yaml", bump)
    for stack in STACKS:
        after = run_stack(project, stack)
        changed = changed_urns(runs[stack], after)
        if load_stack_settings(ROOT, stack).environment != "prod":
            assert changed == set(), f"{stack} must not change"
            continue
        config = runs[stack].find(CONFIG_MAP, "iris-config")
        deployment = runs[stack].find(DEPLOYMENT, "iris-deployment")
        assert changed == {config.urn, deployment.urn}

        new_config = after.find(CONFIG_MAP, "iris-config").object
        assert new_config["metadata"]["name"] != config.object["metadata"]["name"], "a new ConfigMap (replace)"
        assert "versions: 3" in new_config["data"]["models.config"]

        old_spec, new_spec = deployment.object["spec"], after.find(DEPLOYMENT, "iris-deployment").object["spec"]
        # Only the pod template differs, so Kubernetes starts a rollout and Pulumi awaits it.
        assert {k: v for k, v in old_spec.items() if k != "template"} == {
            k: v for k, v in new_spec.items() if k != "template"
        }
        assert old_spec["template"] != new_spec["template"]
        old_pod, new_pod = old_spec["template"]["spec"], new_spec["template"]["spec"]
        assert new_pod["initContainers"][0]["args"] == [f"3={_digest('iris', 3)}"]
        assert old_pod["initContainers"][0]["args"] == [f"2={_digest('iris', 2)}"]
        assert new_pod["volumes"][1]["configMap"]["name"] == new_config["metadata"]["name"]
        assert after.outputs["models"]["iris"]["versions"] == {"stable": 3}


def test_an_unchanged_tree_declares_identical_resources(project, runs):
    for stack in STACKS:
        assert changed_urns(runs[stack], run_stack(project, stack)) == set()


def _digest(model: str, version: int) -> str:
    import yaml

    manifest = yaml.safe_load((ROOT / "models" / f"{model}.yaml").read_text())
    return manifest["versions"][version]["digest"]


def test_removing_the_canary_deletes_only_its_resources(project, runs):
    from scripts.modelctl.plan import Op, plan_stack

    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["dev"].pop("canary"))
    plan = plan_stack("dev", runs["dev"], run_stack(project, "dev"))
    deleted = {s.name for s in plan.steps if s.op is Op.delete}
    assert deleted == {f"iris-canary-{kind}" for kind in ("config", "deployment", "service", "hpa", "pdb")}
    changed = {s.name: s.op for s in plan.changes if s.op is not Op.delete}
    # The routes (REST and gRPC) go back to one backend; nothing else of the model or of any other changes.
    assert changed == {"iris-route": Op.update, "iris-grpc-route": Op.update}


def test_promoting_the_canary_moves_it_to_stable_and_removes_its_workload(project, runs):
    from scripts.modelctl import manifest_edit
    from scripts.modelctl.plan import Op, plan_stack

    def promote_canary(document):
        manifest_edit.set_label(document, "dev", "stable", 2)
        manifest_edit.drop_label(document, "dev", "canary")

    manifest_edit.edit(project, "iris", promote_canary)
    plan = plan_stack("dev", runs["dev"], run_stack(project, "dev"))
    ops = {s.name: s.op for s in plan.changes}
    assert ops == {
        **{f"iris-canary-{kind}": Op.delete for kind in ("config", "deployment", "service", "hpa", "pdb")},
        "iris-config": Op.replace,
        "iris-deployment": Op.update,
        "iris-route": Op.update,
        "iris-grpc-route": Op.update,
    }
