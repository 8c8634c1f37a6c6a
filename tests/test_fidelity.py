"""Issue 24's findings as offline checks: each passes on every shipped stack and fails when the
finding is brought back (the old declarations, crafted from today's plan)."""

from __future__ import annotations

import pytest

from policy import webhooks
from policy.engines import CANARY
from policy.fidelity import (
    EMULATED_FLAGGER_RELEASE,
    canaries_drive_their_own_traffic,
    flagger_release_is_the_emulated_one,
    gpu_node_groups_carry_the_accelerator_label,
    node_groups_ignore_the_autoscaler,
    webhooks_reach_their_targets,
)
from policy.rules import references_resolve
from scripts.modelctl.guardrails import check, stack_policy_settings
from tests.conftest import ROOT, STACKS
from tests.test_engine_emulation import declared, replaced

NODE_GROUP = "eks:index:ManagedNodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
FIDELITY_RULES = (
    "node-groups-ignore-the-autoscaler",
    "gpu-nodes-accelerator-label",
    "flagger-release-emulated",
    "canary-drives-traffic",
    "webhooks-reachable",
    "references-resolve",
)


@pytest.mark.parametrize("stack", STACKS)
def test_every_shipped_stack_passes_the_fidelity_checks(runs, stack):
    violations = check(runs[stack], stack_policy_settings(ROOT, stack))
    assert [str(v) for v in violations if v.rule in FIDELITY_RULES] == []


# Finding 1: Pulumi resets what the Cluster Autoscaler decides -----------------------------------


def test_a_node_group_the_autoscaler_sizes_must_ignore_scaling_changes(runs):
    resources = declared(runs, "eks")
    assert node_groups_ignore_the_autoscaler(resources, None) == []
    gpu = _group_index(resources, "platform-gpu-nodes")
    old = replaced(resources, NODE_GROUP, lambda props: props.pop("ignoreScalingChanges"), which=gpu)
    (problem,) = node_groups_ignore_the_autoscaler(old, None)
    assert problem[0].name == "platform-gpu-nodes" and "ignoreScalingChanges" in problem[1]


def test_without_the_autoscaler_the_declared_size_is_pulumis(runs):
    resources = [
        r
        for r in declared(runs, "eks")
        if not (r.type == RELEASE and str(r.props.get("chart")).endswith("cluster-autoscaler"))
    ]
    old = replaced(resources, NODE_GROUP, lambda props: props.pop("ignoreScalingChanges"))
    assert node_groups_ignore_the_autoscaler(old, None) == []


# Finding 5: GPU nodes lack k8s.amazonaws.com/accelerator -----------------------------------------


def test_a_gpu_node_group_without_the_accelerator_label_is_refused(runs):
    groups = [r for r in declared(runs, "eks") if r.type == NODE_GROUP]
    assert [gpu_node_groups_carry_the_accelerator_label(g, None) for g in groups] == [[], []]
    gpu = _group_index(groups, "platform-gpu-nodes")
    old = replaced(groups, NODE_GROUP, lambda props: props["labels"].pop("k8s.amazonaws.com/accelerator"), which=gpu)
    assert gpu_node_groups_carry_the_accelerator_label(old[gpu], None) == [
        "GPU node group without the k8s.amazonaws.com/accelerator label"
    ]


# Finding 2: a Flagger chart that is not the release of the CRDs and the emulation ----------------


@pytest.mark.parametrize("stack", ["eks", "kind-flagger"])
def test_the_flagger_chart_is_the_emulated_release(runs, stack):
    (flagger,) = [r for r in declared(runs, stack) if r.type == RELEASE and r.props.get("chart") == "flagger"]
    assert flagger.props["version"] == EMULATED_FLAGGER_RELEASE
    assert flagger_release_is_the_emulated_one(flagger, None) == []
    (old,) = replaced([flagger], RELEASE, lambda props: props.update(version="1.45.0"))
    assert "fluxcd/flagger v1.44.0" in flagger_release_is_the_emulated_one(old, None)[0]


# Findings 3 and 4: analyses without traffic, gRPC never canaried ---------------------------------


def _group_index(resources, name):
    """Index among the node groups (their registration order is not fixed under the mocks)."""
    return [r.name for r in resources if r.type == NODE_GROUP].index(name)


def _canary_resources(runs, stack):
    return declared(runs, stack)


def test_a_canary_without_webhooks_is_refused_for_rest_and_grpc(runs):
    resources = _canary_resources(runs, "kind-flagger")
    assert canaries_drive_their_own_traffic(resources, None) == []
    old = replaced(resources, CANARY, lambda props: props["spec"]["analysis"].pop("webhooks"))
    messages = [m for _, m in canaries_drive_their_own_traffic(old, None)]
    assert len(messages) == 2
    assert "no rollout webhook sends REST predictions to iris-canary port 8501" in messages[0]
    assert "serves gRPC on port 8500" in messages[1] and webhooks.GRPC_PREDICT in messages[1]


def test_rest_traffic_alone_does_not_canary_grpc(runs):
    resources = _canary_resources(runs, "eks")

    def rest_only(props):
        hooks = props["spec"]["analysis"]["webhooks"]
        props["spec"]["analysis"]["webhooks"] = [h for h in hooks if h["name"] != "grpc-predict"]

    (problem,) = canaries_drive_their_own_traffic(replaced(resources, CANARY, rest_only), None)
    assert "gRPC is never canaried" in problem[1]


def test_a_grpc_check_aimed_at_the_primary_does_not_count(runs):
    resources = _canary_resources(runs, "eks")

    def at_primary(props):
        for hook in props["spec"]["analysis"]["webhooks"]:
            hook["metadata"]["cmd"] = hook["metadata"]["cmd"].replace("-canary.", "-primary.")

    messages = [m for _, m in canaries_drive_their_own_traffic(replaced(resources, CANARY, at_primary), None)]
    assert len(messages) == 2


def test_a_webhook_must_reach_a_declared_service_and_port(runs):
    resources = _canary_resources(runs, "kind-flagger")
    settings = stack_policy_settings(ROOT, "kind-flagger")
    assert references_resolve(resources, settings) == []

    def elsewhere(props):
        hooks = props["spec"]["analysis"]["webhooks"]
        hooks[0]["url"] = hooks[0]["url"].replace("flagger-loadtester", "loadtester")
        hooks[1]["metadata"]["cmd"] = hooks[1]["metadata"]["cmd"].replace(":8500 ", ":8600 ")

    messages = [m for _, m in references_resolve(replaced(resources, CANARY, elsewhere), settings)]
    assert any("rest-traffic.url (webhook) reaches Service models-flagger/loadtester" in m for m in messages)
    assert any("grpc-predict.metadata.cmd (ghz)" in m and "has no port 8600" in m for m in messages)


def test_the_webhook_targets_are_read_from_the_commands(runs):
    (canary,) = [r for r in declared(runs, "kind-flagger") if r.type == CANARY][:1]
    targets = {(t.tool, t.service, t.namespace, t.port) for t in webhooks.targets(canary)}
    assert targets == {
        ("webhook", "flagger-loadtester", "models-flagger", 80),
        ("hey", "iris-canary", "models-flagger", 8501),
        ("ghz", "iris-canary", "models-flagger", 8500),
    }


# The webhooks through the NetworkPolicies ------------------------------------------------------------

NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def _changed_policy(resources, name, change):
    which = [r.name for r in resources if r.type == NETPOL].index(name)
    return replaced(resources, NETPOL, change, which)


@pytest.mark.parametrize("stack", ["eks", "kind-flagger"])
def test_flagger_reaches_the_load_tester_and_it_reaches_each_canary(runs, stack):
    assert webhooks_reach_their_targets(declared(runs, stack), None) == []


def test_a_load_tester_closed_to_flagger_is_refused(runs):
    resources = _changed_policy(declared(runs, "kind-flagger"), "platform-loadtester-netpol", _no_ingress)
    messages = [m for _, m in webhooks_reach_their_targets(resources, None)]
    assert messages and all("admits no connection from Flagger (namespace flagger-system)" in m for m in messages)
    assert {m.split(": ")[1].split(" (")[0] for m in messages} == {
        "analysis.webhooks.rest-traffic.url",
        "analysis.webhooks.grpc-predict.url",
    }


def _no_ingress(props):
    props["spec"]["ingress"] = []


def test_a_load_tester_without_egress_to_grpc_is_refused(runs):
    def rest_only(props):
        props["spec"]["egress"][0]["ports"] = [p for p in props["spec"]["egress"][0]["ports"] if p["port"] == 8501]

    resources = _changed_policy(declared(runs, "kind-flagger"), "platform-loadtester-netpol", rest_only)
    (problem,) = webhooks_reach_their_targets(resources, None)
    assert "grpc-predict.metadata.cmd (ghz): egress of" in problem[1] and "admits no connection to" in problem[1]


def test_a_model_closed_to_the_namespace_on_grpc_is_refused(runs):
    def rest_only_from_the_namespace(props):
        props["spec"]["ingress"][0]["ports"] = [p for p in props["spec"]["ingress"][0]["ports"] if p["port"] == 8501]

    resources = _changed_policy(declared(runs, "kind-flagger"), "iris-netpol", rest_only_from_the_namespace)
    (problem,) = webhooks_reach_their_targets(resources, None)
    assert "(ghz): ingress of" in problem[1] and "admits no connection from" in problem[1]


def test_without_the_load_testers_policy_the_default_deny_refuses_everything(runs):
    resources = [r for r in declared(runs, "kind-flagger") if r.name != "platform-loadtester-netpol"]
    tools = {m.split("(")[1].split(")")[0] for _, m in webhooks_reach_their_targets(resources, None)}
    assert tools == {"webhook", "hey", "ghz"}
