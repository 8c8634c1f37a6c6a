"""The offline plan emulates the engines: each check fails on a crafted violation, passes on
every shipped stack, and `modelctl plan` refuses a violation naming the rule, the resource
and the fix."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from infra.model import pool as pool_builders
from infra.model import workload
from infra.model.workload import SELECTOR_LABEL
from policy.engines import (
    MODEL_LABEL,
    POOL_LABEL,
    SERVICE,
    NodePool,
    Resource,
    flagger_outcome,
    pod_templates,
    selects,
)
from policy.rules import (
    ExternalObject,
    explicit_providers,
    pods_schedule,
    references_resolve,
    service_isolation,
)
from scripts.modelctl.cli import main
from scripts.modelctl.guardrails import as_policy_resource, check, stack_policy_settings
from tests.conftest import ROOT, STACKS, edit_yaml

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
ENGINE_RULES = ("explicit-providers", "service-isolation", "references-resolve", "pods-schedule")


def declared(runs, stack: str) -> list[Resource]:
    return [as_policy_resource(r) for r in runs[stack].resources]


def replaced(resources: list[Resource], type_: str, change, which: int = 0, named: str | None = None) -> list[Resource]:
    """A copy of `resources` with the `which`-th resource of `type_` (named `named`, if given)
    changed by `change(props)`."""
    out, seen = [], 0
    for resource in resources:
        if resource.type == type_ and (named is None or resource.name == named):
            if seen == which:
                props = copy.deepcopy(dict(resource.props))
                change(props)
                resource = dataclasses.replace(resource, props=props)
            seen += 1
        out.append(resource)
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_every_shipped_stack_passes_every_engine_check(runs, stack):
    violations = check(runs[stack], stack_policy_settings(ROOT, stack))
    assert [str(v) for v in violations if v.rule in ENGINE_RULES] == []


# explicit-providers ----------------------------------------------------------------------------


def test_a_resource_without_its_packages_provider_is_refused_as_the_engine_reports_it(runs):
    settings = stack_policy_settings(ROOT, "eks")
    assert "*" in settings.disabled_default_providers
    resources = declared(runs, "eks")
    assert explicit_providers(resources, settings) == []
    # Drop the eks provider a remote component names: exactly what pulumi-eks#917 hit.
    broken = [dataclasses.replace(r, explicit_providers={}) if r.type == "eks:index:Cluster" else r for r in resources]
    ((resource, message),) = explicit_providers(broken, settings)
    assert resource.type == "eks:index:Cluster"
    assert message == "Default provider for 'eks' disabled. 'eks:index:Cluster' must use an explicit provider."


def test_only_disabled_packages_need_an_explicit_provider(runs):
    resources = [dataclasses.replace(r, explicit_providers={}) for r in declared(runs, "prod")]
    kubernetes_only = dataclasses.replace(stack_policy_settings(ROOT, "prod"), disabled_default_providers=("aws",))
    assert explicit_providers(resources, kubernetes_only) == []
    everything = dataclasses.replace(kubernetes_only, disabled_default_providers=("*",))
    assert {r.type.split(":")[0] for r, _ in explicit_providers(resources, everything)} == {"kubernetes"}


def test_local_components_and_provider_resources_need_no_provider(runs):
    resources = [dataclasses.replace(r, explicit_providers={}) for r in declared(runs, "eks")]
    components = [r for r in resources if r.type.startswith("model-serving:")]
    assert components and all(r.engine_package is None for r in components)
    refused = {r.type for r, _ in explicit_providers(resources, stack_policy_settings(ROOT, "eks"))}
    assert refused and not any(t.startswith(("model-serving:", "pulumi:providers:")) for t in refused)


def test_the_json_plan_records_each_steps_provider_components_included(capsys):
    assert main(["--root", str(ROOT), "plan", "--stack", "eks", "--format", "json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    by_type = {}
    for step in steps:
        by_type.setdefault(step["newState"]["type"], []).append(step)
    for type_, group in by_type.items():
        for step in group:
            if type_.startswith(("eks:", "kubernetes:", "aws:")):
                package = type_.split(":")[0]
                assert f"pulumi:providers:{package}::" in step["provider"], (type_, step.get("provider"))
            elif type_.startswith("model-serving:"):
                assert "provider" not in step, type_
    # A model's component passes the platform's providers down to its children.
    for step in by_type["model-serving:model:ModelDeployment"]:
        assert set(step["providers"]) >= {"kubernetes", "aws"}
    assert by_type["eks:index:Cluster"][0]["providers"]["aws"]


# service-isolation ------------------------------------------------------------------------------


def _shared_selector(props):
    """The selector every model had before: the same `app.kubernetes.io/name` for all."""
    selector = {"app.kubernetes.io/name": "tensorflow-serving", "app.kubernetes.io/instance": "x"}
    props["spec"]["selector"]["matchLabels"] = selector
    props["spec"]["template"]["metadata"]["labels"].pop(SELECTOR_LABEL)
    props["spec"]["template"]["metadata"]["labels"].update(selector)


@pytest.mark.parametrize("stack", ["prod", "eks"])
def test_flaggers_services_select_one_models_pods(runs, stack):
    resources = declared(runs, stack)
    outcome = flagger_outcome(resources)
    services = [r for r in outcome.generated if r.type == SERVICE]
    assert len(services) == 3 * len([r for r in resources if r.kind == "Canary"]) > 0
    pods = pod_templates(resources + outcome.generated)
    for service in services:
        models = {p.model for p in pods if selects(service.spec["selector"], p.labels)}
        assert models == {service.generated_by.props["metadata"]["labels"]["model-serving.dev/model"]}


def test_the_old_shared_selector_makes_flagger_route_across_models(runs):
    resources = declared(runs, "prod")
    assert service_isolation(resources, stack_policy_settings(ROOT, "prod")) == []
    # The models' Deployments (Flagger's load tester, the platform's, is another).
    deployments = [r.name for r in resources if r.type == DEPLOYMENT]
    first, second = [i for i, name in enumerate(deployments) if name != "platform-loadtester"][:2]
    broken = replaced(replaced(resources, DEPLOYMENT, _shared_selector, first), DEPLOYMENT, _shared_selector, second)
    problems = service_isolation(broken, stack_policy_settings(ROOT, "prod"))
    messages = [m for _, m in problems]
    assert any(
        "generated by Flagger" in m and "selects the pods of 2 workloads: model iris, model taxi-fare" in m
        for m in messages
    )
    assert {r.kind for r, _ in problems} == {"Canary"}


def test_a_declared_service_selecting_two_models_is_refused(runs):
    resources = replaced(
        declared(runs, "dev"),
        SERVICE,
        lambda p: p["spec"].update(selector={"app.kubernetes.io/name": "tensorflow-serving"}),
    )
    ((resource, message),) = service_isolation(resources, stack_policy_settings(ROOT, "dev"))
    assert resource.type == SERVICE and "selects the pods of" in message


def pool_service(resources: list[Resource]) -> int:
    """The position, among the Services, of the local stack's pool Service (shard shared-0)."""
    services = [r for r in resources if r.type == SERVICE]
    return next(i for i, r in enumerate(services) if r.object_name == "shared-0")


def test_a_pools_service_selects_its_shards_pods_serving_several_models(runs):
    resources = declared(runs, "local")
    pods = [p for p in pod_templates(resources) if p.labels.get(POOL_LABEL) == "shared-0"]
    assert len(pods) == 1 and pods[0].workload == "pool shared-0" and MODEL_LABEL not in pods[0].labels
    assert service_isolation(resources, stack_policy_settings(ROOT, "local")) == []


def test_a_service_selecting_a_pool_and_a_model_is_refused(runs):
    # A model outside the pool (its own Deployment) beside the local stack's pool.
    resources = declared(runs, "local")
    dedicated = next(r for r in declared(runs, "dev") if r.type == DEPLOYMENT and r.name == "iris-deployment")
    dedicated = dataclasses.replace(dedicated, props={**dedicated.props, "metadata": {"namespace": "models"}})
    both = replaced(
        [*resources, dedicated],
        SERVICE,
        lambda p: p["spec"].update(selector={"app.kubernetes.io/name": "tensorflow-serving"}),
        pool_service(resources),
    )
    problems = [m for _, m in service_isolation(both, stack_policy_settings(ROOT, "local"))]
    assert any("selects the pods of 2 workloads: model iris, pool shared-0" in m for m in problems), problems
    assert any("is the Service of pool shared-0 but selects the pods of model iris" in m for m in problems), problems


def test_a_pools_service_selecting_another_pools_pods_is_refused(runs):
    resources = declared(runs, "local")
    relabelled = replaced(
        resources, SERVICE, lambda p: p["metadata"]["labels"].update({POOL_LABEL: "other-0"}), pool_service(resources)
    )
    ((resource, message),) = service_isolation(relabelled, stack_policy_settings(ROOT, "local"))
    assert resource.type == SERVICE
    assert message.endswith("is the Service of pool other-0 but selects the pods of pool shared-0")


def test_the_policy_labels_are_the_programs():
    assert POOL_LABEL == pool_builders.POOL_LABEL and MODEL_LABEL == workload.MODEL_LABEL


def test_flagger_refuses_a_target_without_one_of_its_selector_labels(runs):
    def no_selector_label(props):
        props["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/instance": "iris"}

    broken = replaced(declared(runs, "prod"), DEPLOYMENT, no_selector_label, named="iris-deployment")
    ((resource, message),) = service_isolation(broken, stack_policy_settings(ROOT, "prod"))
    assert resource.kind == "Canary" and "must contain one of app, name, app.kubernetes.io/name" in message


# references-resolve ------------------------------------------------------------------------------


REFERENCE_CASES = [
    (
        "prod",
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
        lambda p: p["spec"]["scaleTargetRef"].update(name="gone"),
        "spec.scaleTargetRef names Deployment",
    ),
    (
        "prod",
        "kubernetes:flagger.app/v1beta1:Canary",
        lambda p: p["spec"]["analysis"]["metrics"][0]["templateRef"].update(name="gone"),
        "names MetricTemplate",
    ),
    (
        "prod",
        "kubernetes:flagger.app/v1beta1:Canary",
        lambda p: p["spec"]["targetRef"].update(name="gone"),
        "spec.targetRef names Deployment",
    ),
    (
        "prod",
        "kubernetes:monitoring.coreos.com/v1:ServiceMonitor",
        lambda p: p["spec"]["endpoints"][0].update(port="metrics"),
        "no selected Service has a port named 'metrics'",
    ),
    (
        "dev",
        "kubernetes:monitoring.coreos.com/v1:ServiceMonitor",
        lambda p: p["spec"]["selector"].update(matchLabels={"x": "y"}),
        "selects no Service",
    ),
    (
        "dev",
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        lambda p: p["spec"]["rules"][0]["backendRefs"][0].update(port=9999),
        "has no port 9999",
    ),
    (
        "dev",
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        lambda p: p["spec"]["rules"][0]["backendRefs"][0].update(name="gone"),
        "names Service models-dev/gone",
    ),
    (
        "local",
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        lambda p: p["spec"]["parentRefs"][0].update(sectionName="http"),
        "names listener 'http'",
    ),
    (
        "dev",
        DEPLOYMENT,
        lambda p: p["spec"]["template"]["spec"]["volumes"][1]["configMap"].update(name="gone"),
        "names ConfigMap models-dev/gone",
    ),
    (
        "dev",
        DEPLOYMENT,
        lambda p: p["spec"]["template"]["spec"].update(serviceAccountName="gone"),
        "names ServiceAccount",
    ),
    (
        "staging",
        "kubernetes:networking.k8s.io/v1:Ingress",
        lambda p: p["spec"].update(ingressClassName="nginx"),
        "names IngressClass nginx",
    ),
]


@pytest.mark.parametrize(("stack", "type_", "change", "expected"), REFERENCE_CASES)
def test_a_dangling_reference_is_refused(runs, stack, type_, change, expected):
    settings = stack_policy_settings(ROOT, stack)
    assert references_resolve(declared(runs, stack), settings) == []
    problems = references_resolve(replaced(declared(runs, stack), type_, change), settings)
    assert any(expected in message for _, message in problems), problems


def test_an_undeclared_prerequisite_must_be_listed_as_external(runs):
    settings = stack_policy_settings(ROOT, "prod")
    without_tls = dataclasses.replace(settings, external=tuple(e for e in settings.external if e.kind != "Secret"))
    problems = references_resolve(declared(runs, "prod"), without_tls)
    assert [m for _, m in problems] == [
        "Gateway models/models: listeners.https.tls names Secret models/models-example-com-tls, which the stack "
        "neither declares nor lists as external",
        "Gateway models/models: listeners.grpc.tls names Secret models/grpc-models-example-com-tls, which the stack "
        "neither declares nor lists as external",
    ]
    listed = dataclasses.replace(
        without_tls,
        external=(
            *without_tls.external,
            ExternalObject("Secret", "models-example-com-tls", "models"),
            ExternalObject("Secret", "grpc-models-example-com-tls", "models"),
        ),
    )
    assert references_resolve(declared(runs, "prod"), listed) == []


# pods-schedule ------------------------------------------------------------------------------------


def pool(name="cpu", cpu=4000, memory=16 * 2**30, gpus=0, nodes=4, labels=None, taints=(), autoscaled=False):
    return NodePool(name, labels or {}, tuple(taints), cpu, memory, gpus, nodes, autoscaled)


def test_pods_fit_roomy_nodes(runs):
    settings = dataclasses.replace(stack_policy_settings(ROOT, "prod"), node_pools=(pool(nodes=20),))
    assert pods_schedule(declared(runs, "prod"), settings) == []


def test_a_pod_larger_than_any_node_is_refused(runs):
    # taxi-fare serves with 2 CPU in prod; a node of ~1.93 CPU allocatable cannot hold it.
    settings = dataclasses.replace(stack_policy_settings(ROOT, "prod"), node_pools=(pool(cpu=1930, nodes=20),))
    problems = pods_schedule(declared(runs, "prod"), settings)
    assert problems and all("one pod requests" in m for _, m in problems)
    assert any("taxi-fare" in m for _, m in problems)


def test_minimum_replicas_beyond_the_pools_nodes_are_refused(runs):
    tight = dataclasses.replace(stack_policy_settings(ROOT, "prod"), node_pools=(pool(nodes=1),))
    problems = pods_schedule(declared(runs, "prod"), tight)
    assert problems and any(
        "pods at minimum replicas fit on no node" in m and "no node autoscaler" in m for _, m in problems
    )


def test_a_pod_no_pool_admits_is_refused(runs):
    tainted = pool(taints=({"key": "dedicated", "value": "x", "effect": "NoSchedule"},), nodes=50)
    settings = dataclasses.replace(stack_policy_settings(ROOT, "prod"), node_pools=(tainted,))
    problems = pods_schedule(declared(runs, "prod"), settings)
    assert problems and all("no node pool admits its pods" in m for _, m in problems)


# modelctl plan -------------------------------------------------------------------------------------


def test_plan_refuses_an_engine_violation_naming_rule_resource_and_fix(project, capsys):
    edit_yaml(
        project / "stacks" / "Pulumi.prod.yaml",
        lambda d: d["config"]["model-serving:external"].pop(0),  # the GatewayClass
    )
    assert main(["--root", str(project), "plan", "--stack", "prod"]) == 1
    err = capsys.readouterr().err
    assert (
        "policy: stack prod: [mandatory] references-resolve: kubernetes:gateway.networking.k8s.io/v1:Gateway "
        "platform-gateway: Gateway models/models: spec.gatewayClassName names GatewayClass eg" in err
    )
    assert "(fix: declare the object, correct the name, or list it under `model-serving:external`" in err
