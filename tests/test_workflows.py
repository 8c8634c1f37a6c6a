"""The pull-request workflows: structure, and the comment upsert script against a fake `gh`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.shell_scripts import is_shell_script, shell_scripts

WORKFLOWS = ROOT / ".github" / "workflows"
UPSERT = ROOT / ".github" / "scripts" / "upsert-comment.sh"
# requirements-dev.txt installs it beside the interpreter running the tests.
ACTIONLINT = Path(sys.executable).parent / "actionlint"
ZIZMOR = Path(sys.executable).parent / "zizmor"


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
    assert job["permissions"] == {"contents": "read"}, "it runs the pull request's code"
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "modelctl plan --all-stacks --base" in runs and "--format markdown" in runs
    assert not any("upsert-comment.sh" in step.get("run", "") for step in job["steps"]), "preview-comment.yml posts"
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["name"] == "offline-plan"
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0, "the base revision must be in the clone"
    assert "secrets." not in (WORKFLOWS / "preview.yml").read_text().split("credentials:")[0]


def test_pulumi_preview_runs_per_stack_only_with_credentials():
    job = load("preview.yml")["jobs"]["pulumi-preview"]
    assert job["needs"] == "credentials"
    assert "needs.credentials.outputs.available == 'true'" in job["if"]
    assert SAME_REPOSITORY in job["if"], "never for a fork's code"
    assert set(job["strategy"]["matrix"]["stack"]) == {"dev", "staging", "prod"}
    action = next(s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert action["with"]["command"] == "preview"
    assert action["with"]["comment-on-summary"] is True
    assert "comment-on-pr" not in action["with"], "no write on pull requests"


def test_pulumi_preview_has_read_only_oidc_credentials_for_the_artifact_checks():
    workflow = load("preview.yml")
    job = workflow["jobs"]["pulumi-preview"]
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    # A pull request's code: the `preview` Environment's read-only identity, never a deploy one.
    assert job["environment"] == "preview"
    text = yaml.safe_dump(job)
    assert "secrets.READONLY_KUBECONFIG_DATA" in text and "secrets.READONLY_PULUMI_ACCESS_TOKEN" in text
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
    credentials = workflow["jobs"]["credentials"]
    assert credentials["environment"] == "preview", "its secrets are visible in that Environment only"
    assert SAME_REPOSITORY in credentials["if"]
    check = credentials["steps"][0]
    assert check["env"]["AWS_PREVIEW_ROLE_ARN"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"
    assert '[ -n "$AWS_PREVIEW_ROLE_ARN" ]' in check["run"]
    # Nothing else in the workflow may write with OIDC: the offline plan runs with no credentials.
    assert "id-token" not in workflow["permissions"]
    assert "id-token" not in workflow["jobs"]["offline-plan"]["permissions"]


def test_comments_come_from_the_artifact_without_running_pull_request_code():
    workflow = load("preview-comment.yml")
    assert workflow["on"]["workflow_run"]["workflows"] == ["preview"]
    job = workflow["jobs"]["comment"]
    assert "head_repository" not in job["if"], "every pull request's plan is posted from here"
    steps = job["steps"]
    assert not any("make" in s.get("run", "") or "modelctl" in s.get("run", "") for s in steps)
    post = next(s for s in steps if "upsert-comment.sh" in s.get("run", ""))
    # The artifact's number is checked against the pull request the preview run planned.
    assert post["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    assert '"$head" != "$HEAD_SHA"' in post["run"]
    # The comment it may edit is its own: the GITHUB_TOKEN's identity, passed explicitly.
    assert 'upsert-comment.sh "$REPOSITORY" "$pr" comment.md "github-actions[bot]"' in post["run"]


# `if:` of a job that may hold credentials: only pull requests from this repository's branches.
SAME_REPOSITORY = "github.event.pull_request.head.repo.full_name == github.repository"
PULL_REQUEST_EVENTS = ("pull_request", "pull_request_target")
READ_ONLY = ("read", "none")


def triggers(workflow: dict) -> set[str]:
    on = workflow["on"]
    return {on} if isinstance(on, str) else set(on)


def permissions_of(workflow: dict, job: dict) -> dict:
    """A job's token permissions: its own block, else the workflow's (a job without either
    would get the repository's default, which may be write-all)."""
    if "permissions" in job:
        return job["permissions"] or {}
    assert "permissions" in workflow, "permissions must be explicit"
    return workflow["permissions"] or {}


def checks_out_code(job: dict) -> bool:
    return any(step.get("uses", "").startswith("actions/checkout@") for step in job.get("steps", []))


def test_no_workflow_uses_pull_request_target():
    # It runs with the base repository's secrets and a write token: checking out the pull
    # request's code there would hand both to it.
    for path in WORKFLOWS.glob("*.yml"):
        assert not triggers(load(path.name)) & {"pull_request_target"}, path.name


def test_jobs_that_run_pull_request_code_are_read_only_without_secrets():
    checked = 0
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = load(path.name)
        if not triggers(workflow) & set(PULL_REQUEST_EVENTS):
            continue
        for name, job in workflow["jobs"].items():
            where = f"{path.name}: {name}"
            permissions = permissions_of(workflow, job)
            writes = {scope for scope, level in permissions.items() if level not in READ_ONLY}
            text = yaml.safe_dump(job)
            guarded = SAME_REPOSITORY in str(job.get("if", ""))
            if checks_out_code(job):
                checked += 1
                if not guarded:
                    assert not writes, f"{where} runs pull-request code with write permissions {writes}"
                    assert "secrets." not in text, f"{where} runs pull-request code with secrets"
                else:
                    # Same-repository pull requests only: OIDC to a read-only role, nothing else writes.
                    assert writes <= {"id-token"}, f"{where}: {writes}"
            else:
                assert not writes, f"{where}: a pull-request workflow writes nothing"
    assert checked >= 2, "the offline plan and pulumi preview jobs"


def test_the_comment_job_runs_no_pull_request_code_and_may_only_comment():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = load(path.name)
        if "workflow_run" not in triggers(workflow):
            continue
        assert workflow["permissions"] == {}, f"{path.name}: nothing by default"
        for name, job in workflow["jobs"].items():
            permissions = permissions_of(workflow, job)
            writes = {scope for scope, level in permissions.items() if level not in READ_ONLY}
            assert writes <= {"pull-requests"}, f"{path.name}: {name}: {writes}"
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    # No `ref:`: the default branch, never the pull request's head.
                    assert "ref" not in step.get("with", {}), f"{path.name}: {name}"
                    assert "repository" not in step.get("with", {}), f"{path.name}: {name}"
                # The default branch's own stdlib script (the checkout above is never the PR's).
                run = step.get("run", "").replace("python3 .github/scripts/plan_comment.py", "")
                for runs_code in ("make", "modelctl", "pip ", "python", ".venv", "npm", "./"):
                    assert runs_code not in run, f"{path.name}: {name} runs {runs_code!r}"
            assert "secrets." not in yaml.safe_dump(job)


def test_no_run_script_splices_event_values_into_its_text():
    # `${{ github.event... }}` in `run:` is pasted into the script before the shell sees it
    # (GitHub's "Security hardening for GitHub Actions", script injections): values go
    # through `env:` instead.
    for where, step in steps_of_every_workflow():
        run = step.get("run", "")
        for expression in re.findall(r"\$\{\{(.*?)\}\}", run):
            assert "github.event" not in expression and "_ref" not in expression, f"{where}: {expression}"


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


BOT = "github-actions[bot]"


def upsert(tmp_path, body_text: str, existing_comments: str):
    """Run upsert-comment.sh for PR 7 of acme/models against the fake `gh`; (result, gh log)."""
    body = tmp_path / "plan.md"
    body.write_text(body_text)
    env, log = fake_gh(tmp_path, existing_comments)
    result = subprocess.run(
        ["bash", str(UPSERT), "acme/models", "7", str(body), BOT], env=env, capture_output=True, text=True
    )
    return result, log


def upsert_against_comments(tmp_path, comments: list[dict], bot_login: str = BOT):
    """upsert-comment.sh against a `gh` that holds these comments and applies the script's own
    --jq filter to them with jq (gh's --jq is jq's language), so the filter itself is tested."""
    if shutil.which("jq") is None:
        pytest.fail("jq is not installed: `apt-get install jq`")
    page = tmp_path / "comments.json"
    page.write_text(json.dumps(comments))
    log = tmp_path / "gh.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        "for ((i = 1; i <= $#; i++)); do\n"
        '  if [ "${!i}" = --jq ]; then j=$((i + 1)); jq -r "${!j}" ' + str(page) + "; fi\n"
        "done\n"
    )
    (bin_dir / "gh").chmod(0o755)
    body = tmp_path / "plan.md"
    body.write_text(PLAN_BODY)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(UPSERT), "acme/models", "7", str(body), bot_login], env=env, capture_output=True, text=True
    )
    return result, log.read_text().splitlines() if log.exists() else []


def comment(comment_id: int, login: str, body: str) -> dict:
    return {
        "id": comment_id,
        "user": {"login": login, "type": "Bot" if login.endswith("[bot]") else "User"},
        "body": body,
    }


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


def test_upsert_never_edits_a_users_comment_that_starts_with_the_marker(tmp_path):
    # Anyone can comment on a pull request: a comment that starts with the marker but was
    # written by a user is not the bot's, whatever it says.
    planted = comment(11, "mallory", PLAN_BODY + "click here\n")
    result, calls = upsert_against_comments(tmp_path, [planted])
    assert result.returncode == 0, result.stderr
    assert not any("PATCH" in call for call in calls), calls
    assert "api --method POST repos/acme/models/issues/7/comments -F body=@" + str(tmp_path / "plan.md") in calls


def test_upsert_edits_the_bots_own_comment_not_an_earlier_planted_one(tmp_path):
    comments = [
        comment(11, "mallory", PLAN_BODY),
        comment(12, "octocat", "LGTM, see <!-- modelctl-plan -->"),
        comment(13, BOT, "an unrelated bot comment\n"),
        comment(14, BOT, PLAN_BODY + "| dev | 2 changes |\n"),
    ]
    result, calls = upsert_against_comments(tmp_path, comments)
    assert result.returncode == 0, result.stderr
    assert [c for c in calls if "PATCH" in c or "POST" in c] == [
        "api --method PATCH repos/acme/models/issues/comments/14 -F body=@" + str(tmp_path / "plan.md")
    ]
    assert result.stdout == "updated comment 14\n"


def test_upsert_refuses_a_missing_or_malformed_bot_login(tmp_path):
    for case, login in enumerate(("", 'x") or true or ("', "github actions")):
        (tmp_path / str(case)).mkdir()
        result, calls = upsert_against_comments(tmp_path / str(case), [], login)
        assert result.returncode == 1 and "BOT_LOGIN" in result.stderr, login
        assert calls == [], "nothing is asked of GitHub"


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
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
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
# aws-actions/configure-aws-credentials@v6 L4, pulumi/actions@v7 L143, actions/github-script@v8 L39,
# actions/deploy-pages@v5 L5, actions/configure-pages@v6 (v6.0.0: "upgrade to node 24", its #186;
# v5's L5 is node20), actions/upload-pages-artifact@v5 (composite; L84 runs upload-artifact@v7.0.0,
# v4 ran upload-artifact@v4.6.2)), actions/create-github-app-token@v3 (v3.0.0 action.yml L139;
# v2.2.2 is node20).
FIRST_NODE24_MAJOR = {
    "actions/checkout": 5,
    "actions/setup-python": 6,
    "actions/upload-artifact": 6,
    "actions/download-artifact": 7,
    "aws-actions/configure-aws-credentials": 6,
    "pulumi/actions": 7,
    "actions/github-script": 8,
    "actions/configure-pages": 6,
    "actions/upload-pages-artifact": 5,
    "actions/deploy-pages": 5,
    "actions/cache": 5,
    "actions/create-github-app-token": 3,
}


def steps_of_every_workflow():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for job_name, job in load(path.name)["jobs"].items():
            for step in job.get("steps", []):
                yield f"{path.name}: {job_name}", step


# `uses: owner/repo[/path]@<full commit SHA> # v<version>`: a tag or branch can be moved to other
# code after review, a full-length commit SHA cannot (docs.github.com, "Security hardening for
# GitHub Actions", "Using third-party actions"; docs.zizmor.sh/audits/#unpinned-uses); the
# comment names the release the SHA was taken from, for readers and update tools.
PINNED_USES = re.compile(r"^\s*(?:- )?uses: ([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)\b")


def pinned_actions() -> list[tuple[str, str, str, str]]:
    """(where, action, commit, version) of every `uses:` of every workflow; asserts the form."""
    found = []
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not re.match(r"^\s*(?:- )?uses:", line):
                continue
            where = f"{path.name}:{number}"
            if re.match(r"^\s*uses: \./\.github/workflows/", line):
                continue  # a reusable workflow of this repository, at this run's commit
            match = PINNED_USES.match(line)
            assert match, f"{where}: not pinned as `owner/repo@<40-hex sha> # vX.Y.Z`: {line.strip()}"
            found.append((where, *match.groups()))
    return found


def test_every_action_is_pinned_by_commit_with_its_version_in_a_comment():
    pins = pinned_actions()
    assert len(pins) >= 40, "every step of every workflow"
    # One action, one commit: two SHAs for one action would mean a half-done upgrade.
    by_action: dict[str, set[tuple[str, str]]] = {}
    for _, action, commit, version in pins:
        by_action.setdefault(action, set()).add((commit, version))
    assert all(len(pairs) == 1 for pairs in by_action.values()), by_action


def test_the_pin_check_refuses_tags_branches_and_short_shas():
    for line in (
        "      - uses: actions/checkout@v5",
        "      - uses: actions/checkout@main",
        "      - uses: actions/checkout@fbc6f39 # v5.1.0",
        "      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09",
    ):
        assert not PINNED_USES.match(line), line
    assert PINNED_USES.match("      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # v5.1.0")


def test_no_workflow_uses_an_action_major_that_runs_on_node20():
    used = set()
    for where, action, _, version in pinned_actions():
        if action not in FIRST_NODE24_MAJOR:
            continue
        used.add(action)
        major = int(version.removeprefix("v").split(".")[0])
        assert major >= FIRST_NODE24_MAJOR[action], f"{where}: {action} {version} runs on node20"
    assert {"actions/checkout", "pulumi/actions"} <= used, "the table no longer matches the workflows"


def test_no_workflow_grants_write_or_oidc_at_workflow_level():
    # Workflow-level permissions reach every job, including those that run a pull request's code
    # or third-party actions; each job states its own (docs.github.com, "Controlling permissions
    # for GITHUB_TOKEN"; docs.zizmor.sh/audits/#excessive-permissions).
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = load(path.name)
        assert workflow.get("permissions", "missing") == {}, f"{path.name}: `permissions: {{}}` at workflow level"
        for name, job in workflow["jobs"].items():
            if "steps" in job and "uses" not in job:
                assert "permissions" in job or not checks_out_code(job), f"{path.name}: {name}: no permissions"


def test_checkouts_keep_no_credentials_in_the_clone():
    # actions/checkout writes the token into .git/config unless told not to; an artifact or a
    # later step's code could then carry it off (docs.zizmor.sh/audits/#artipacked).
    for where, step in steps_of_every_workflow():
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, where


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


def zizmor(*inputs: Path) -> subprocess.CompletedProcess:
    if not ZIZMOR.is_file():
        pytest.fail(f"{ZIZMOR} is missing: pip install -r requirements-dev.txt")
    # --offline: no GitHub API here (audits that need it are skipped); as `make lint` runs it.
    command = [str(ZIZMOR), "--offline", "--no-progress", "--color=never", *map(str, inputs)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_zizmor_finds_nothing_in_any_workflow():
    result = zizmor(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every finding it does not report is ignored in place, each with its reason on that line
    # or just above (grep `zizmor: ignore`).
    for path in sorted(WORKFLOWS.glob("*.yml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "zizmor: ignore[" in line:
                reason = line.split("]", 1)[1] + lines[number - 1]
                assert len(reason.strip(" #()")) > 20, f"{path.name}:{number + 1}: say why"


def test_zizmor_reports_the_defects_it_is_here_for(tmp_path):
    # The clean run above means something only if zizmor, offline, does look.
    workflow = tmp_path / "bad.yml"
    workflow.write_text(
        "on: push\n"
        "permissions:\n"
        "  contents: read\n"
        "  id-token: write\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v5\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
        # With one job zizmor takes workflow-level permissions as that job's own.
        "  other:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo\n"
    )
    result = zizmor(workflow)
    assert result.returncode != 0
    for audit in ("unpinned-uses", "template-injection", "excessive-permissions", "artipacked"):
        assert f"[{audit}]" in result.stdout, audit


def test_shellcheck_finds_nothing_in_any_shell_script():
    scripts = shell_scripts()
    expected = {
        ".ci/run",
        ".github/scripts/upsert-comment.sh",
        ".github/scripts/drift-issue.sh",
        "infra/model/fetch_models.sh",
        "scripts/e2e/e2e.sh",
    }
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


def test_e2e_runs_make_e2e_on_pull_requests_touching_what_it_deploys_and_nightly():
    workflow = load("e2e.yml")
    paths = set(workflow["on"]["pull_request"]["paths"])
    assert {"infra/**", "stacks/**", "models/**", "scripts/**", "policy/**"} <= paths
    (cron,) = workflow["on"]["schedule"]
    assert len(cron["cron"].split()) == 5 and cron["cron"].split()[2:] == ["*", "*", "*"], "daily"
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    e2e = next(i for i, s in enumerate(steps) if s.get("run", "").strip() == "make e2e")
    # The tools before the run, pinned: kind and kubectl checksummed, the Pulumi CLI by version.
    tools = next(i for i, s in enumerate(steps) if "kind-linux-amd64" in s.get("run", ""))
    assert "sha256sum --check" in steps[tools]["run"] and steps[tools]["run"].count("sha256sum --check") == 2
    pulumi = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("pulumi/actions@"))
    assert "command" not in steps[pulumi]["with"], "install only: the script runs pulumi"
    assert steps[pulumi]["with"]["pulumi-version"] == "${{ env.PULUMI_VERSION }}"
    assert tools < e2e and pulumi < e2e
    env = workflow["env"]
    assert re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", env["KIND_VERSION"])
    assert re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", env["KUBECTL_VERSION"])
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"pulumi=={env['PULUMI_VERSION']}\n" in requirements, "the CLI of the SDK the program uses"
    # The logs, whatever the outcome.
    upload = next(s for s in steps[e2e:] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "build/e2e/"


def test_e2e_runs_pull_request_code_with_a_read_only_token_and_no_secrets():
    workflow = load("e2e.yml")
    assert workflow["permissions"] == {}
    for job in workflow["jobs"].values():
        assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}
        assert "environment" not in job
    text = (WORKFLOWS / "e2e.yml").read_text()
    assert "secrets." not in text and "id-token" not in text
    assert "pull_request_target" not in workflow["on"]


def test_drift_previews_every_deployed_stack_nightly_with_a_read_only_identity():
    workflow = load("drift.yml")
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch"}, "never a pull request's code"
    assert workflow["permissions"] == {}
    job = workflow["jobs"]["preview"]
    assert set(job["strategy"]["matrix"]["stack"]) == {"dev", "staging", "prod", "eks"}
    assert job["strategy"]["fail-fast"] is False
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    # Drift only looks: the `drift` Environment's read-only identity, not prod's deploy one (which
    # lives behind prod's reviewers), and no reviewers to hold it every night.
    assert job["environment"] == "drift"
    steps = job["steps"]
    login = next(
        i for i, s in enumerate(steps) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    )
    assert steps[login]["with"]["role-to-assume"] == "${{ vars.AWS_DRIFT_ROLE_ARN }}"
    kubeconfig = next(i for i, s in enumerate(steps) if "READONLY_KUBECONFIG_DATA" in s.get("env", {}))
    preview = next(i for i, s in enumerate(steps) if "pulumi preview" in s.get("run", ""))
    assert login < preview and kubeconfig < preview
    command = steps[preview]["run"]
    assert "--expect-no-changes" in command and "--refresh" in command
    assert steps[preview]["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.READONLY_PULUMI_ACCESS_TOKEN }}"
    # Drift and a failed preview are told apart by the CLI's own message for --expect-no-changes.
    assert "no changes were expected" in command and "echo error" in command
    upload = next(s for s in steps[preview:] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"


def test_only_the_drift_report_may_write_issues():
    workflow = load("drift.yml")
    report = workflow["jobs"]["report"]
    assert report["needs"] == "preview" and report["if"] == "always()"
    assert report["permissions"] == {"contents": "read", "issues": "write"}
    assert any("drift-issue.sh" in s.get("run", "") for s in report["steps"])
    for path in WORKFLOWS.glob("*.yml"):
        for name, job in load(path.name)["jobs"].items():
            if (path.name, name) != ("drift.yml", "report"):
                assert "issues" not in job.get("permissions", {}), f"{path.name}: {name}"
        assert "issues" not in (load(path.name).get("permissions") or {}), path.name


DRIFT_ISSUE = ROOT / ".github" / "scripts" / "drift-issue.sh"


def drift_report(tmp_path, statuses: dict[str, str], open_issue: str):
    """drift-issue.sh for acme/models with these per-stack results, against the fake `gh`."""
    results = tmp_path / "drift"
    results.mkdir()
    for stack, status in statuses.items():
        (results / f"{stack}.status").write_text(status + "\n")
        (results / f"{stack}.txt").write_text(f"Previewing update ({stack})\n  ~ kubernetes:apps/v1:Deployment iris\n")
    env, log = fake_gh(tmp_path, open_issue)
    result = subprocess.run(
        ["bash", str(DRIFT_ISSUE), "acme/models", str(results), "https://github.com/acme/models/actions/runs/9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def test_drift_opens_one_labelled_issue_with_the_diff(tmp_path):
    result, calls = drift_report(tmp_path, {"dev": "clean", "prod": "drifted", "eks": "clean"}, "")
    assert result.returncode == 0, result.stderr
    assert calls[0].startswith("issue list --repo acme/models --label drift --state open")
    assert any(c.startswith("label create drift --repo acme/models") and "--force" in c for c in calls)
    (create,) = [c for c in calls if c.startswith("issue create")]
    assert "--label drift" in create and "--title Drift: deployed stacks differ" in create


def test_drift_updates_the_open_issue_instead_of_opening_another(tmp_path):
    result, calls = drift_report(tmp_path, {"staging": "drifted", "prod": "clean"}, "17")
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("issue edit 17 --repo acme/models --body-file") for c in calls)
    assert any(c.startswith("issue comment 17") and "staging" in c for c in calls)
    assert not any(c.startswith("issue create") for c in calls)


def test_the_drift_issue_body_names_each_stack_and_shows_the_drifted_preview(tmp_path):
    (tmp_path / "bin").mkdir()
    # A gh that keeps the body it is given.
    (tmp_path / "bin" / "gh").write_text(
        '#!/bin/sh\ncase "$*" in *--body-file*) eval "last=\\${$#}"; cp "$last" "$FAKE_BODY" ;; esac\n'
    )
    (tmp_path / "bin" / "gh").chmod(0o755)
    results = tmp_path / "drift"
    results.mkdir()
    for stack, status in {"dev": "drifted", "prod": "clean", "eks": "error"}.items():
        (results / f"{stack}.status").write_text(status)
        (results / f"{stack}.txt").write_text(f"{stack} preview output\n")
    body = tmp_path / "body.md"
    env = os.environ | {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_BODY": str(body)}
    result = subprocess.run(
        ["bash", str(DRIFT_ISSUE), "acme/models", str(results), "RUN"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = body.read_text()
    assert text.startswith("<!-- drift-report -->\n")
    assert "| dev | **drifted** |" in text and "| prod | no drift |" in text and "| eks | preview failed" in text
    assert "dev preview output" in text and "prod preview output" not in text


def test_drift_closes_the_issue_once_every_stack_is_clean(tmp_path):
    result, calls = drift_report(tmp_path, {"dev": "clean", "staging": "clean", "prod": "clean", "eks": "clean"}, "17")
    assert result.returncode == 0, result.stderr
    (close,) = [c for c in calls if c.startswith("issue close")]
    assert close.startswith("issue close 17 --repo acme/models --comment No drift in")


def test_a_failed_preview_neither_closes_nor_opens_the_issue(tmp_path):
    result, calls = drift_report(tmp_path, {"dev": "clean", "prod": "error"}, "17")
    assert result.returncode == 0, result.stderr
    assert [c.split()[1] for c in calls] == ["list"]


def test_no_results_at_all_is_an_error(tmp_path):
    result, calls = drift_report(tmp_path, {}, "17")
    assert result.returncode == 1 and "no results" in result.stderr
    assert calls == [], "nothing is closed for want of results"


def test_the_catalog_is_published_to_pages_by_a_job_that_alone_may_write_pages():
    workflow = load("catalog.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {}
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert build["permissions"] == {"contents": "read"}
    assert deploy["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    assert "modelctl catalog --out build/catalog" in runs
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "build/catalog/"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


def test_retrain_runs_on_the_manifests_schedule_one_candidate_per_runner():
    from infra.spec.manifest import load_manifests

    workflow = load("retrain.yml")
    taxi = next(m for m in load_manifests(ROOT) if m.name == "taxi-fare")
    triggers = workflow.get("on") or workflow[True]  # PyYAML reads the key `on` as True
    assert [entry["cron"] for entry in triggers["schedule"]] == [taxi.training.schedule]
    assert "workflow_dispatch" in triggers
    jobs = workflow["jobs"]
    assert jobs["candidate"]["strategy"]["matrix"]["index"] == list(
        range(1, len(taxi.training.candidates.expand()) + 1)
    )
    assert workflow["permissions"] == {}
    assert jobs["candidate"]["permissions"] == {"contents": "read", "id-token": "write"}
    writers = [
        name
        for name, job in jobs.items()
        if "write" in (job["permissions"].get("contents"), job["permissions"].get("pull-requests"))
    ]
    assert writers == [], "GITHUB_TOKEN writes nothing: the App's token pushes and opens the pull request"


def retrain_step(job: str, name: str) -> dict:
    return next(s for s in load("retrain.yml")["jobs"][job]["steps"] if s.get("name") == name)


def test_retrain_opens_its_pull_request_as_a_github_app_so_that_its_workflows_run():
    # A pull request opened with GITHUB_TOKEN starts no workflow (docs.github.com, "Triggering a
    # workflow from a workflow"): no plan comment, no preview, no required checks.
    jobs = load("retrain.yml")["jobs"]
    publish = jobs["publish"]
    steps = publish["steps"]
    mint = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/create-github-app-token@"))
    opened = next(i for i, s in enumerate(steps) if s.get("name") == "Open the pull request")
    assert mint < opened
    assert steps[mint]["id"] == "app-token" and steps[mint]["if"] == steps[opened]["if"]
    assert steps[mint]["with"] == {
        "client-id": "${{ vars.RETRAIN_APP_CLIENT_ID }}",
        "private-key": "${{ secrets.RETRAIN_APP_PRIVATE_KEY }}",
        "permission-contents": "write",
        "permission-pull-requests": "write",
    }
    assert steps[opened]["env"]["GH_TOKEN"] == "${{ steps.app-token.outputs.token }}"
    assert "github.token" not in yaml.safe_dump(publish), "GITHUB_TOKEN neither pushes nor opens it"
    assert publish["environment"] == "retrain", "the App's key is an Environment secret"
    # Never trains, publishes or opens anything without the App.
    assert jobs["candidate"]["needs"] == "pull-request-token"
    assert "pull-request-token" in publish["needs"]
    assert "needs.pull-request-token.result == 'success'" in publish["if"]


def run_retrain_step(tmp_path, job: str, name: str, **env: str) -> subprocess.CompletedProcess:
    step = retrain_step(job, name)
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    return subprocess.run(
        ["bash", "-eo", "pipefail", str(script)], env=os.environ | env, capture_output=True, text=True, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("client_id", "private_key", "named"),
    [
        ("", "", ["RETRAIN_APP_CLIENT_ID", "RETRAIN_APP_PRIVATE_KEY"]),
        ("Iv23li0example", "", ["RETRAIN_APP_PRIVATE_KEY"]),
        ("", "-----BEGIN RSA PRIVATE KEY-----", ["RETRAIN_APP_CLIENT_ID"]),
    ],
)
def test_retrain_refuses_at_once_and_names_what_to_set_without_the_app(tmp_path, client_id, private_key, named):
    step = retrain_step("pull-request-token", "Refuse without the GitHub App that opens the pull request")
    assert step["env"] == {
        "RETRAIN_APP_CLIENT_ID": "${{ vars.RETRAIN_APP_CLIENT_ID }}",
        "RETRAIN_APP_PRIVATE_KEY": "${{ secrets.RETRAIN_APP_PRIVATE_KEY }}",
    }
    result = run_retrain_step(
        tmp_path,
        "pull-request-token",
        step["name"],
        RETRAIN_APP_CLIENT_ID=client_id,
        RETRAIN_APP_PRIVATE_KEY=private_key,
    )
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == len(named)
    for error, name in zip(errors, named, strict=True):
        assert name in error and "retrain Environment" in error and "docs/security.md" in error


def test_retrain_goes_on_when_the_app_is_configured(tmp_path):
    result = run_retrain_step(
        tmp_path,
        "pull-request-token",
        "Refuse without the GitHub App that opens the pull request",
        RETRAIN_APP_CLIENT_ID="Iv23li0example",
        RETRAIN_APP_PRIVATE_KEY="-----BEGIN RSA PRIVATE KEY-----",
    )
    assert result.returncode == 0 and "::error" not in result.stdout


def test_retrain_pushes_and_opens_the_pull_request_with_the_apps_token_only(tmp_path):
    """The step's script against a fake `gh` and a `git` that records its environment: the App's
    token reaches the push through git's environment, never argv or .git/config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "gh").write_text(
        f'#!/bin/sh\necho "gh $* token=$GH_TOKEN" >> {log}\ncase "$*" in "api users/"*) echo 12345 ;; esac\n'
    )
    (bin_dir / "git").write_text(
        f'#!/bin/sh\necho "git $* count=${{GIT_CONFIG_COUNT:-}} key=${{GIT_CONFIG_KEY_0:-}} '
        f'value=${{GIT_CONFIG_VALUE_0:-}}" >> {log}\n'
    )
    for tool in ("gh", "git"):
        (bin_dir / tool).chmod(0o755)
    result = run_retrain_step(
        tmp_path,
        "publish",
        "Open the pull request",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        GH_TOKEN="ghs_apptoken",
        APP_SLUG="model-retrain",
        SERVER_URL="https://github.com",
        MODEL="taxi-fare",
        ENVIRONMENT="staging",
        GITHUB_RUN_ID="9",
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    basic = "eC1hY2Nlc3MtdG9rZW46Z2hzX2FwcHRva2Vu"  # base64("x-access-token:ghs_apptoken")
    assert f"::add-mask::{basic}" in result.stdout
    assert "gh api users/model-retrain[bot] --jq .id token=ghs_apptoken" in calls
    assert "git config user.email 12345+model-retrain[bot]@users.noreply.github.com count= key= value=" in calls
    (push,) = [c for c in calls if c.startswith("git push")]
    assert push == (
        "git push origin retrain/taxi-fare-9 count=1 key=http.https://github.com/.extraheader "
        f"value=AUTHORIZATION: basic {basic}"
    )
    assert not any("ghs_apptoken" in c or basic in c for c in calls if c.startswith("git") and c != push)
    (create,) = [c for c in calls if c.startswith("gh pr create")]
    assert "--head retrain/taxi-fare-9" in create and create.endswith("token=ghs_apptoken")


def test_main_keeps_the_plan_cache_that_pull_requests_start_from():
    """GitHub shows a pull request only its own caches and the default branch's: main's job
    fills the cache (pruned to what the plan of main used) under the prefix preview.yml restores."""
    workflow = load("plan-cache.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert set(load("preview.yml")["on"]["pull_request"]["paths"]) <= set(workflow["on"]["push"]["paths"])
    assert workflow["permissions"] == {}
    job = workflow["jobs"]["plan-cache"]
    assert job["permissions"] == {"contents": "read"}
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "modelctl plan --all-stacks --base HEAD --prune-cache" in runs
    saved = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/cache@"))
    restored = next(
        s
        for s in load("preview.yml")["jobs"]["offline-plan"]["steps"]
        if s.get("uses", "").startswith("actions/cache@")
    )
    assert saved["with"]["path"] == restored["with"]["path"] == "build/.plan-cache"
    assert saved["with"]["key"].startswith(restored["with"]["restore-keys"])
    assert "${{ github.sha }}" in saved["with"]["key"], "one key per commit: a GitHub cache is never overwritten"


# Credentials that can change a cluster or a stack. Each exists only as a secret of the GitHub
# Environment named like its stack (dev, staging, prod): a job reads an Environment's secrets only
# once that Environment's protection rules (prod: required reviewers, main only) have passed
# (docs.github.com, "Managing environments for deployment"), so the approval is a boundary.
DEPLOY_SECRETS = ("secrets.KUBECONFIG_DATA", "secrets.PULUMI_ACCESS_TOKEN")
DEPLOY_ROLE = "vars.AWS_DEPLOY_ROLE_ARN"
DEPLOY_ENVIRONMENTS = {"${{ inputs.stack }}"}  # deploy-stack.yml, called with dev, staging, prod
# Identities that can only look, each in its own Environment (its own OIDC subject).
READ_ONLY_ENVIRONMENTS = {"preview", "drift"}
READ_ONLY_SECRETS = ("secrets.READONLY_KUBECONFIG_DATA", "secrets.READONLY_PULUMI_ACCESS_TOKEN")


def environment_of(job: dict) -> str | None:
    environment = job.get("environment")
    return environment.get("name") if isinstance(environment, dict) else environment


def every_job():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in load(path.name)["jobs"].items():
            yield f"{path.name}: {name}", job


def test_deploy_credentials_are_read_only_in_the_deploy_environments():
    readers = []
    for where, job in every_job():
        text = yaml.safe_dump(job, width=1000)
        environment = environment_of(job)
        for secret in (*DEPLOY_SECRETS, DEPLOY_ROLE):
            if secret in text:
                readers.append(where)
                assert environment in DEPLOY_ENVIRONMENTS, f"{where} reads {secret} outside a deploy Environment"
        for secret in READ_ONLY_SECRETS:
            if secret in text:
                assert environment in READ_ONLY_ENVIRONMENTS, f"{where} reads {secret} outside preview/drift"
        # A deploy Environment runs only the default branch's code (deploy.yml: push to main).
        if environment in DEPLOY_ENVIRONMENTS:
            assert not set(triggers(load(where.split(":")[0]))) & set(PULL_REQUEST_EVENTS), where
    assert set(readers) == {"deploy-stack.yml: up"}, "only the deploy stage holds deploy credentials"


def test_no_workflow_passes_every_secret_to_a_called_workflow():
    # `secrets: inherit` would hand repository secrets to the called workflow whatever it needs
    # (docs.zizmor.sh/audits/#secrets-inherit); deploy-stack.yml reads its Environment's own.
    for where, job in every_job():
        assert "secrets" not in job, where


def test_pull_request_code_never_runs_in_a_deploy_environment_nor_with_a_deploy_identity():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = load(path.name)
        if not triggers(workflow) & set(PULL_REQUEST_EVENTS):
            continue
        for name, job in workflow["jobs"].items():
            environment = environment_of(job)
            assert environment in (None, "preview"), f"{path.name}: {name} runs in {environment}"
            text = yaml.safe_dump(job, width=1000)
            assert DEPLOY_ROLE not in text and not any(s in text for s in DEPLOY_SECRETS), f"{path.name}: {name}"


def test_the_stages_oidc_subjects_are_their_environments():
    # With `environment:` the job's OIDC token has the subject repo:<owner>/<repo>:environment:<name>
    # (docs.github.com, "OpenID Connect reference"): each role's trust policy names one of these.
    subjects = set()
    for _, job in every_job():
        if job.get("permissions", {}).get("id-token") == "write" and "steps" in job:
            environment = environment_of(job)
            if any("configure-aws-credentials@" in s.get("uses", "") for s in job["steps"]):
                subjects.add(environment)
    assert {"${{ inputs.stack }}", "preview", "drift"} <= subjects
    docs = (ROOT / "docs" / "security.md").read_text()
    for environment in ("prod", "staging", "dev", "preview", "drift"):
        assert f"repo:OWNER/REPO:environment:{environment}" in docs, environment


def test_the_preview_identitys_admission_policy_in_the_docs_is_valid_kubernetes():
    """docs/security.md gives the dry-run-only policy as YAML to apply: it must be what the API accepts."""
    import kubernetes_validate

    text = (ROOT / "docs" / "security.md").read_text()
    section = text[text.index("## Read-only identities") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```", section.index("```yaml") + 7)]
    documents = [d for d in yaml.safe_load_all(textwrap.dedent(block)) if d]
    assert [d["kind"] for d in documents] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for document in documents:
        kubernetes_validate.validate(document, "1.30.0", strict=True)


# The trusted header of the plan comment (.github/scripts/plan_comment.py) -------------------------


def _plan_comment(
    tmp_path: Path, plan: str, changed: list[str], count: int | None = None
) -> subprocess.CompletedProcess:
    (tmp_path / "plan.md").write_text(plan)
    (tmp_path / "changed").write_text("\n".join(changed) + "\n")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / ".github" / "scripts" / "plan_comment.py"),
            str(tmp_path / "plan.md"),
            str(tmp_path / "changed"),
            str(len(changed) if count is None else count),
            "https://github.com/o/r/actions/runs/1",
        ],
        capture_output=True,
        text=True,
    )


def _blocks_before_the_plan(comment: str) -> list[str]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(comment)
    end = next(i for i, t in enumerate(tokens) if t.type == "hr")
    return [t.type for t in tokens[:end]]


def test_the_comment_job_posts_the_plan_under_a_header_the_pull_request_cannot_write():
    job = load("preview-comment.yml")["jobs"]["comment"]
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "pulls/$pr/files" in script and "plan_comment.py artifact/plan.md" in script
    assert 'upsert-comment.sh "$REPOSITORY" "$pr" comment.md' in script


def test_a_manifest_only_change_gets_no_warning_and_one_marker(tmp_path):
    plan = "<!-- modelctl-plan -->\n## Offline plan\n\n- **prod**: 1 to update\n"
    result = _plan_comment(tmp_path, plan, ["models/iris.yaml", "stacks/Pulumi.prod.yaml"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!-- modelctl-plan -->\n")
    assert result.stdout.count("<!-- modelctl-plan -->") == 1
    assert "CAUTION" not in result.stdout and "- **prod**: 1 to update" in result.stdout
    assert "https://github.com/o/r/actions/runs/1" in result.stdout


def test_a_change_to_the_plans_code_is_named_above_whatever_that_code_wrote(tmp_path):
    # The pull request's own report.py can write anything, including a fake "no changes" and an
    # unclosed comment or code block; the header comes first and its blocks close before the plan.
    forged = "<!-- modelctl-plan -->\n- **prod**: no changes\n\n<!--\n```\n"
    changed = ["scripts/modelctl/report.py", "models/iris.yaml", "weird`` name\x1b[2J.py"]
    result = _plan_comment(tmp_path, forged, changed)
    assert result.returncode == 0, result.stderr
    header = result.stdout[: result.stdout.index("\n---\n")]
    assert "[!CAUTION]" in header and "> - `scripts/modelctl/report.py`" in header
    # The one code-span sink (scripts/modelctl/sinks.py): a longer fence, the ESC shown.
    assert "> - ```weird`` name\\x1b[2J.py```" in header and "models/iris.yaml" not in header
    assert "blockquote_open" in _blocks_before_the_plan(result.stdout)


def test_files_beyond_the_apis_listing_count_as_code(tmp_path):
    result = _plan_comment(tmp_path, "plan\n", ["models/iris.yaml"], count=3500)
    assert "changes 3499 file(s) outside" in result.stdout and "and 3499 more" in result.stdout


def test_a_plan_of_any_size_fits_githubs_comment_limit(tmp_path):
    plan = "<!-- modelctl-plan -->\n" + "| `iris` | 1 → 2 | 0.5 → 1 | 512Mi → 1Gi |\n" * 20_000
    result = _plan_comment(tmp_path, plan, ["infra/model/workload.py"])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) < 65_536
    assert "The plan was cut to 60,000 characters" in result.stdout
    assert result.stdout.endswith("|\n")  # cut at a line, never inside one


def test_the_comment_says_where_the_whole_plan_is_and_the_artifact_has_it():
    job = load("preview.yml")["jobs"]["offline-plan"]
    plan = next(s for s in job["steps"] if "modelctl plan" in s.get("run", ""))
    assert '--full-plan-url "$RUN_URL"' in plan["run"] and "--full-plan-note" in plan["run"]
    assert plan["env"]["RUN_URL"].endswith("/actions/runs/${{ github.run_id }}")
    assert "--max-chars 0 --max-diff-chars 0 > plan-full.md" in plan["run"]
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"].split() == ["plan.md", "plan-full.md", "pr-number"]
