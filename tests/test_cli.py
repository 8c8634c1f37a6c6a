"""`modelctl validate`, `schema` and `plan --render`, and the program's own refusal of bad input."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from infra import program
from infra.offline import OfflineRun, run_stack
from infra.spec.manifest import manifest_json_schema
from scripts.modelctl.cli import main
from scripts.modelctl.render import INDEX_FILE
from tests.conftest import ROOT, STACKS, edit_yaml


def test_validate_accepts_the_repository(capsys):
    assert main(["--root", str(ROOT), "validate"]) == 0
    assert f"{len(STACKS)} stack(s)" in capsys.readouterr().out


def test_committed_schema_is_current_and_referenced_by_every_manifest(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == manifest_json_schema()
    committed = json.loads((ROOT / "models" / "manifest.schema.json").read_text())
    assert committed == printed, "run `make schema`"
    for manifest in (ROOT / "models").glob("*.yaml"):
        assert manifest.read_text().startswith("# yaml-language-server: $schema=manifest.schema.json\n")
    assert set(printed["properties"]) >= {"name", "versions", "serving", "environments", "promotion", "card"}


@pytest.mark.parametrize("stack", STACKS)
def test_plan_prints_one_line_per_resource_and_renders_each_object(runs, stack, capsys, tmp_path):
    out = tmp_path / "render"
    assert main(["--root", str(ROOT), "plan", "--stack", stack, "--render", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    run = runs[stack]
    # Without a base every resource is a create: "  + <type>  <name>  parent: <parent>  create: new"
    rows = [line.split() for line in printed if line.startswith("  + ")]
    assert len(rows) == len(run.resources)
    assert {(r[1], r[2]) for r in rows} == {(r.type, r.name) for r in run.resources}
    for row in rows:
        resource = run.find(row[1], row[2])
        parent = run.by_urn().get(resource.parent)
        assert row[3] == "parent:"
        assert row[4] == (parent.name if parent else f"model-serving-{stack}")
    files = sorted(p for p in out.rglob("*.yaml"))
    assert len(files) == len(run.kubernetes_objects())
    rendered = {(d["kind"], d["metadata"]["name"]) for d in (yaml.safe_load(f.read_text()) for f in files)}
    assert rendered == {(r.object["kind"], r.object["metadata"]["name"]) for r in run.kubernetes_objects()}
    # One directory per component: the platform, each model, each serving-pool shard.
    assert {f.parent.name for f in files} == {"platform", *run.outputs["models"], *run.outputs.get("pools", {})}


def test_render_removes_what_it_wrote_before_and_nothing_else(project, tmp_path, capsys):
    out = tmp_path / "render"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["--root", str(project), "plan", "--stack", "prod", "--render", str(out)]) == 0
    assert (out / "iris").is_dir()
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"].pop("prod"))
    assert main(["--root", str(project), "plan", "--stack", "prod", "--render", str(out)]) == 0
    assert not list((out / "iris").glob("*.yaml")), "stale objects of a removed model are gone"
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / INDEX_FILE).is_file()


def test_rendered_objects_carry_no_secret_material(tmp_path, capsys):
    out = tmp_path / "render"
    assert main(["--root", str(ROOT), "plan", "--stack", "local", "--render", str(out)]) == 0
    text = "".join(p.read_text() for p in out.rglob("*.yaml"))
    # Credentials come from a Secret reference, never as values.
    assert "object-store-credentials" in text
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def test_program_main_refuses_invalid_manifests_before_declaring_anything(project):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 42}))
    declared = OfflineRun(stack="prod")
    with pytest.raises(pulumi.RunError, match="nothing declared"):
        run_stack(project, "prod", entry=program.main, into=declared)
    assert declared.resources == [], "no provider, no namespace, no model from an invalid manifest"


def test_program_main_declares_the_stack_like_the_offline_run(runs, project):
    # Artifact verification against a real store is tested in test_lifecycle.py.
    edit_yaml(
        project / "stacks" / "Pulumi.prod.yaml",
        lambda d: d["config"]["model-serving:objectStore"].update({"verifyArtifacts": False}),
    )
    via_main = run_stack(project, "prod", entry=program.main)
    assert {r.urn for r in via_main.resources} == {r.urn for r in runs["prod"].resources}


def test_tensorflow_is_imported_only_by_the_commands_that_need_it():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from scripts.modelctl.cli import main\n"
        "assert main(['--root', sys.argv[1], 'validate']) == 0\n"
        "assert main(['--root', sys.argv[1], 'plan', '--stack', 'dev']) == 0\n"
        "assert main(['--root', sys.argv[1], 'status']) == 0\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_program_needs_neither_tensorflow_nor_tensorflow_serving_api():
    """`pulumi install` builds requirements.txt only: the program and `modelctl plan` run with
    TensorFlow and tensorflow-serving-api unimportable, and requirements.txt names neither."""
    import subprocess
    import sys

    requirements = (ROOT / "requirements.txt").read_text().lower()
    assert "tensorflow" not in "".join(line.split("#")[0] for line in requirements.splitlines())
    code = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras'):\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "from infra.offline import run_stack\n"
        "from pathlib import Path\n"
        "for stack in ('dev', 'prod', 'eks'):\n"
        "    assert run_stack(Path(sys.argv[1]), stack).resources\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_model_with_no_published_version_yet_gets_clear_answers(project, capsys, tmp_path):
    """A brand-new manifest (`versions: {}`, served nowhere) validates; the commands that need a
    version say so in one line instead of failing on an empty list."""
    from tests.conftest import edit_yaml

    edit_yaml(project / "models" / "iris.yaml", lambda d: d.update(versions={}, environments={}))
    assert main(["--root", str(project), "validate"]) == 0
    assert main(["--root", str(project), "contract", "iris"]) == 1
    assert "models/iris.yaml: versions: no published version yet" in capsys.readouterr().err
    assert main(["--root", str(project), "promote", "iris", "--env", "dev"]) == 1
    assert "iris has no published version yet" in capsys.readouterr().err
    assert main(["--root", str(project), "catalog", "--out", str(tmp_path / "catalog")]) == 0
    assert any((tmp_path / "catalog").rglob("iris*.html")), "the model still gets its page"
