"""The pull-request workflows: structure, and the comment upsert script against a fake `gh`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.shell_scripts import is_shell_script, shell_scripts

WORKFLOWS = ROOT / ".github" / "workflows"
UPSERT = ROOT / ".github" / "scripts" / "upsert-comment.sh"
# requirements-dev.txt installs it beside the interpreter running the tests.
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def load(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True)
    return document


def test_preview_runs_the_offline_plan_on_pull_requests_touching_the_inputs():
    workflow = load("preview.yml")
    paths = workflow["on"]["pull_request"]["paths"]
    assert {"models/**", "stacks/**", "infra/**"} <= set(paths)
    job = workflow["jobs"]["offline-plan"]
    assert job["permissions"]["pull-requests"] == "write"
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "modelctl plan --all-stacks --base" in runs and "--format markdown" in runs
    assert any("upsert-comment.sh" in step.get("run", "") for step in job["steps"])
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0, "the base revision must be in the clone"
    assert "secrets." not in (WORKFLOWS / "preview.yml").read_text().split("credentials:")[0]


def test_pulumi_preview_runs_per_stack_only_with_credentials():
    job = load("preview.yml")["jobs"]["pulumi-preview"]
    assert job["needs"] == "credentials"
    assert job["if"] == "needs.credentials.outputs.available == 'true'"
    assert set(job["strategy"]["matrix"]["stack"]) == {"dev", "staging", "prod"}
    action = next(s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert action["with"]["command"] == "preview"
    assert action["with"]["comment-on-pr"] is True


def test_pulumi_preview_has_read_only_oidc_credentials_for_the_artifact_checks():
    workflow = load("preview.yml")
    job = workflow["jobs"]["pulumi-preview"]
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    steps = job["steps"]
    login = next(
        i for i, s in enumerate(steps) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    )
    assert steps[login]["with"] == {
        "role-to-assume": "${{ vars.AWS_PREVIEW_ROLE_ARN }}",
        "aws-region": "${{ vars.AWS_REGION }}",
    }
    preview = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("pulumi/actions@"))
    assert login < preview, "credentials before the preview runs the artifact checks"
    # Without the role the preview would fail its artifact checks: the job is skipped instead.
    check = workflow["jobs"]["credentials"]["steps"][0]
    assert check["env"]["AWS_PREVIEW_ROLE_ARN"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"
    assert '[ -n "$AWS_PREVIEW_ROLE_ARN" ]' in check["run"]
    # Nothing else in the workflow may write with OIDC: the offline plan runs with no credentials.
    assert "id-token" not in workflow["permissions"]
    assert "id-token" not in workflow["jobs"]["offline-plan"]["permissions"]


def test_fork_comments_come_from_the_artifact_without_running_fork_code():
    workflow = load("preview-comment.yml")
    assert workflow["on"]["workflow_run"]["workflows"] == ["preview"]
    steps = workflow["jobs"]["comment"]["steps"]
    assert not any("make" in s.get("run", "") or "modelctl" in s.get("run", "") for s in steps)


def fake_gh(tmp_path: Path, existing_comments: str) -> tuple[dict, Path]:
    log = tmp_path / "gh.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *"--jq"*) printf "%s" "$FAKE_GH_IDS" ;; esac\n'
    )
    (bin_dir / "gh").chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GH_IDS": existing_comments}
    return env, log


def upsert(tmp_path, body_text: str, existing_comments: str):
    """Run upsert-comment.sh for PR 7 of acme/models against the fake `gh`; (result, gh log)."""
    body = tmp_path / "plan.md"
    body.write_text(body_text)
    env, log = fake_gh(tmp_path, existing_comments)
    result = subprocess.run(
        ["bash", str(UPSERT), "acme/models", "7", str(body)], env=env, capture_output=True, text=True
    )
    return result, log


PLAN_BODY = "<!-- modelctl-plan -->\n## Offline plan\n"


def test_upsert_updates_the_existing_plan_comment(tmp_path):
    result, log = upsert(tmp_path, PLAN_BODY, "4242\n")
    assert result.returncode == 0, result.stderr
    assert "api --method PATCH repos/acme/models/issues/comments/4242" in log.read_text()


def test_upsert_creates_a_comment_when_there_is_none(tmp_path):
    result, log = upsert(tmp_path, PLAN_BODY, "")
    assert result.returncode == 0, result.stderr
    assert "api --method POST repos/acme/models/issues/7/comments" in log.read_text()


def test_upsert_refuses_a_body_without_the_marker(tmp_path):
    result, _ = upsert(tmp_path, "something else\n", "")
    assert result.returncode == 1


def test_deploy_runs_dev_then_staging_then_prod_each_in_its_environment():
    workflow = load("deploy.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert list(jobs) == ["dev", "staging", "prod"]
    assert "needs" not in jobs["dev"]
    assert jobs["staging"]["needs"] == "dev" and jobs["prod"]["needs"] == "staging"
    for stack, job in jobs.items():
        assert job["uses"] == "./.github/workflows/deploy-stack.yml"
        assert job["with"] == {"stack": stack}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    # Each stage is one of the stacks.
    assert set(jobs) <= {p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.*.yaml")}


def test_a_stage_runs_pulumi_up_with_the_policy_pack_in_its_environment_then_smoke():
    workflow = load("deploy-stack.yml")
    assert workflow["on"]["workflow_call"]["inputs"]["stack"]["required"] is True
    (job,) = workflow["jobs"].values()
    assert job["environment"]["name"] == "${{ inputs.stack }}"
    steps = job["steps"]
    up = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("pulumi/actions@"))
    assert steps[up]["with"]["command"] == "up"
    assert steps[up]["with"]["policyPacks"] == "policy"
    assert steps[up]["with"]["policyPackConfigs"] == "policy/config/${{ inputs.stack }}.json"
    smoke = next(i for i, s in enumerate(steps) if "modelctl smoke" in s.get("run", ""))
    assert smoke > up, "smoke after the deployment"


def test_every_job_of_every_workflow_has_steps_or_calls_a_workflow():
    for path in WORKFLOWS.glob("*.yml"):
        workflow = load(path.name)
        assert workflow["jobs"], path
        for name, job in workflow["jobs"].items():
            assert ("steps" in job) != ("uses" in job), f"{path.name}: {name}"
            if "steps" in job:
                assert "runs-on" in job, f"{path.name}: {name}"
                for step in job["steps"]:
                    assert ("uses" in step) != ("run" in step), f"{path.name}: {name}: {step}"
            for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
                assert need in workflow["jobs"], f"{path.name}: {name} needs unknown {need}"


# The first major of each action whose action.yml runs on node24; every earlier major runs on
# node20, which GitHub removed from its runners in September 2026 (runs.using in action.yml:
# actions/checkout@v5 L116, actions/setup-python@v6 L44, actions/upload-artifact@v6 L68 (v5 is
# still node20), actions/download-artifact@v7 L42 (v6 is still node20),
# aws-actions/configure-aws-credentials@v6 L4, pulumi/actions@v7 L143, actions/github-script@v8 L39).
FIRST_NODE24_MAJOR = {
    "actions/checkout": 5,
    "actions/setup-python": 6,
    "actions/upload-artifact": 6,
    "actions/download-artifact": 7,
    "aws-actions/configure-aws-credentials": 6,
    "pulumi/actions": 7,
    "actions/github-script": 8,
    "actions/cache": 5,
}


def steps_of_every_workflow():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for job_name, job in load(path.name)["jobs"].items():
            for step in job.get("steps", []):
                yield f"{path.name}: {job_name}", step


def test_no_workflow_uses_an_action_major_that_runs_on_node20():
    used = set()
    for where, step in steps_of_every_workflow():
        action, _, ref = step.get("uses", "").partition("@")
        if action not in FIRST_NODE24_MAJOR:
            continue
        used.add(action)
        major = int(ref.removeprefix("v").split(".")[0])
        assert major >= FIRST_NODE24_MAJOR[action], f"{where}: {action}@{ref} runs on node20"
    assert {"actions/checkout", "pulumi/actions"} <= used, "the table no longer matches the workflows"


def test_every_job_has_a_timeout():
    # GitHub's default is 360 minutes; a hung `pulumi up` or preview should free the runner (and
    # the deploy concurrency group) long before that. A job calling a reusable workflow takes no
    # timeout-minutes: the called workflow's jobs carry it.
    for path in WORKFLOWS.glob("*.yml"):
        for name, job in load(path.name)["jobs"].items():
            if "uses" in job:
                assert "timeout-minutes" not in job, f"{path.name}: {name}"
                assert (ROOT / job["uses"]).is_file(), f"{path.name}: {name}"
            else:
                # The deploy job waits for Flagger's analysis of every model (smoke: up to 30 min).
                assert 0 < job.get("timeout-minutes", 0) <= 90, f"{path.name}: {name} needs timeout-minutes"


def require_shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck is not installed: `apt-get install shellcheck` (`make test` does it as root)")
    return found


def actionlint(*workflows: Path) -> subprocess.CompletedProcess:
    if not ACTIONLINT.is_file():
        pytest.fail(f"{ACTIONLINT} is missing: pip install -r requirements-dev.txt")
    # Named explicitly: without shellcheck, actionlint skips `run:` blocks without a word.
    command = [str(ACTIONLINT), "-no-color", "-shellcheck", require_shellcheck(), *map(str, workflows)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_actionlint_finds_nothing_in_any_workflow():
    workflows = sorted(WORKFLOWS.glob("*.y*ml"))
    assert len(workflows) >= 4
    result = actionlint(*workflows)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_a_node20_action_and_a_shellcheck_finding(tmp_path):
    # The clean run above means something only if actionlint, with shellcheck, does look.
    workflow = tmp_path / "bad.yml"
    workflow.write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-latest\n"
        "    timeout-minutes: 5\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo $GITHUB_SHA > $RUNNER_TEMP/sha\n"
    )
    result = actionlint(workflow)
    assert result.returncode == 1
    assert 'runtime "node20" is deprecated' in result.stdout
    assert "SC2086" in result.stdout


def test_shellcheck_finds_nothing_in_any_shell_script():
    scripts = shell_scripts()
    expected = {".ci/run", ".github/scripts/upsert-comment.sh", "infra/model/fetch_models.sh"}
    assert expected <= {str(path) for path in scripts}
    result = subprocess.run(
        [require_shellcheck(), *map(str, scripts)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_reports_an_unquoted_expansion(tmp_path):
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/sh\nrm -rf $1/cache\n")
    result = subprocess.run([require_shellcheck(), str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "SC2086" in result.stdout


def test_shell_scripts_are_found_by_name_or_shebang(tmp_path):
    cases = {
        "a.sh": "echo\n",
        "run": "#!/usr/bin/env bash\n",
        "init": "#!/bin/sh -eu\n",
        "tool": "#!/usr/bin/env python3\n",
        "notes": "plain text\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    found = {name for name in cases if is_shell_script(tmp_path / name)}
    assert found == {"a.sh", "run", "init"}


def test_codeowners_makes_each_manifests_owner_its_reviewer():
    from infra.spec.manifest import load_manifests
    from scripts.modelctl.cli import codeowners

    manifests = load_manifests(ROOT)
    committed = (ROOT / ".github" / "CODEOWNERS").read_text()
    assert committed == codeowners(manifests), "run `make codeowners`"
    for manifest in manifests:
        assert f"/models/{manifest.name}.yaml {manifest.owner}\n" in committed
