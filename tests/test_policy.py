"""The guardrails: each rule refuses a violating object, the rendered stacks pass, the Pulumi
policy pack reports what the offline check reports, and a violating plan exits 1."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from policy.rules import MANDATORY, PolicySettings, Resource, evaluate
from scripts.modelctl.cli import main
from scripts.modelctl.guardrails import as_policy_resource, check, policy_config, stack_policy_settings
from tests.conftest import ROOT, STACKS, edit_yaml

POLICY_PYTHON = ROOT / ".venv-policy" / "bin" / "python"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"


def resources(run) -> list[Resource]:
    return [as_policy_resource(r) for r in run.kubernetes_objects()]


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stacks_pass_every_mandatory_policy(runs, stack):
    violations = check(runs[stack], stack_policy_settings(ROOT, stack))
    assert [v for v in violations if v.enforcement == MANDATORY] == []
    # Only the advisory digest rule speaks: tensorflow/serving is pinned by exact tag.
    assert {v.rule for v in violations} <= {"images-by-digest"}


def break_one(runs, stack: str, type_: str, change) -> list[Resource]:
    objects = resources(runs[stack])
    # A model's object (iris's), not whichever of the type registered first: the platform's own
    # Deployments register in an order the event loop decides.
    candidates = [i for i, r in enumerate(objects) if r.type == type_]
    index = next((i for i in candidates if objects[i].name.startswith("iris")), candidates[0])
    props = copy.deepcopy(dict(objects[index].props))
    change(props)
    objects[index] = Resource(objects[index].type, objects[index].name, props)
    return objects


def server(props):
    return props["spec"]["template"]["spec"]["containers"][0]


def fetcher(props):
    return props["spec"]["template"]["spec"]["initContainers"][0]


PROD = PolicySettings(require_digest=False, production=True, host="models.example.com")
CASES = [
    (
        "images-pinned",
        "prod",
        DEPLOYMENT,
        lambda p: server(p).update(image="docker.io/tensorflow/serving:latest"),
        PROD,
    ),
    ("images-pinned", "prod", DEPLOYMENT, lambda p: fetcher(p).update(image="amazon/aws-cli"), PROD),
    ("requests-and-limits", "prod", DEPLOYMENT, lambda p: server(p)["resources"].pop("limits"), PROD),
    (
        "restricted-pod-security",
        "prod",
        DEPLOYMENT,
        lambda p: server(p)["securityContext"].update(privileged=True),
        PROD,
    ),
    (
        "restricted-pod-security",
        "prod",
        DEPLOYMENT,
        lambda p: p["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        PROD,
    ),
    ("production-replicas", "prod", HPA, lambda p: p["spec"].update(minReplicas=1), PROD),
    ("production-replicas", "prod", PDB, lambda p: p["spec"]["selector"].update(matchLabels={"app": "other"}), PROD),
    (
        "canary-weight",
        "dev",
        ROUTE,
        lambda p: (
            p["spec"]["rules"][0]["backendRefs"][1].update(weight=60)
            or p["spec"]["rules"][0]["backendRefs"][0].update(weight=40)
        ),
        PolicySettings(),
    ),
    ("served-versions-have-digest", "prod", DEPLOYMENT, lambda p: fetcher(p).update(args=["2"]), PROD),
    (
        "routes-on-stack-host",
        "dev",
        ROUTE,
        lambda p: p["spec"].update(hostnames=["evil.example.org"]),
        PolicySettings(host="models.dev.example.com"),
    ),
]


@pytest.mark.parametrize(("rule", "stack", "type_", "change", "settings"), CASES, ids=[c[0] for c in CASES])
def test_each_policy_fails_on_a_violating_object(runs, rule, stack, type_, change, settings):
    assert not [v for v in evaluate(resources(runs[stack]), settings) if v.rule == rule], "passes unbroken"
    violations = [v for v in evaluate(break_one(runs, stack, type_, change), settings) if v.rule == rule]
    assert violations
    assert all(v.enforcement == MANDATORY for v in violations)


def test_digest_pinning_is_mandatory_only_where_the_stack_requires_it(runs):
    digest = "sha256:" + "a" * 64
    pinned = []
    for r in resources(runs["prod"]):
        props = copy.deepcopy(dict(r.props))
        if r.type == DEPLOYMENT:
            server(props)["image"] = f"docker.io/tensorflow/serving:2.19.1@{digest}"
        pinned.append(Resource(r.type, r.name, props))
    strict = PolicySettings(require_digest=True)
    assert not [v for v in evaluate(pinned, strict) if v.rule == "images-by-digest"]
    tag_only = [v for v in evaluate(resources(runs["prod"]), strict) if v.rule == "images-by-digest"]
    assert tag_only and {v.enforcement for v in tag_only} == {MANDATORY}
    relaxed = [v for v in evaluate(resources(runs["prod"]), PolicySettings()) if v.rule == "images-by-digest"]
    assert relaxed and {v.enforcement for v in relaxed} == {"advisory"}


def test_a_plan_with_a_violation_exits_1_naming_the_policy_and_the_resource(project, capsys):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["dev"]["canary"].update({"weight": 60}))
    assert main(["--root", str(project), "plan", "--stack", "dev", "--policy"]) == 1
    err = capsys.readouterr().err
    assert (
        "policy: stack dev: [mandatory] canary-weight: kubernetes:gateway.networking.k8s.io/v1:HTTPRoute iris-route"
        in err
    )


@pytest.mark.parametrize("stack", STACKS)
def test_committed_policy_pack_config_matches_the_stack(stack):
    committed = json.loads((ROOT / "policy" / "config" / f"{stack}.json").read_text())
    assert committed == policy_config(stack_policy_settings(ROOT, stack)), "run `make policy-config`"


def test_the_pulumi_policy_pack_reports_what_the_offline_check_reports(runs, tmp_path):
    """The pack's pulumi-policy wrappers, in the pack's own virtualenv, over a broken prod stack."""
    if not POLICY_PYTHON.exists():
        pytest.fail("no .venv-policy: `make test` creates it from policy/requirements.txt")
    objects = break_one(runs, "prod", DEPLOYMENT, lambda p: server(p).update(image="tensorflow/serving:latest"))
    objects = [
        r if r.type != HPA else Resource(r.type, r.name, {**r.props, "spec": {**r.props["spec"], "minReplicas": 1}})
        for r in objects
    ]
    (tmp_path / "objects.json").write_text(json.dumps([[r.type, r.name, r.props] for r in objects]))
    config = json.loads((ROOT / "policy" / "config" / "prod.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = Path(__file__).with_name("policy_pack_driver.py")
    result = subprocess.run(
        [str(POLICY_PYTHON), str(script), str(tmp_path / "objects.json"), str(tmp_path / "config.json")],
        capture_output=True,
        text=True,
        cwd=ROOT / "policy",
    )
    assert result.returncode == 0, result.stderr
    reported = {tuple(v) for v in json.loads(result.stdout)}
    plain = [Resource(r.type, r.name, r.props) for r in objects]  # what the pack sees of them
    expected = {(v.rule, v.resource.name) for v in evaluate(plain, stack_policy_settings(ROOT, "prod"))}
    assert reported == expected
    assert {rule for rule, _ in reported} >= {"images-pinned", "production-replicas"}
