"""gRPC through the Gateway: a GRPCRoute per model on `<model>.grpc.<host>`, checked like the REST route."""

from __future__ import annotations

import pytest

from infra.spec.manifest import served_in
from infra.spec.project import validate_project
from infra.spec.settings import load_stack_settings
from policy.engines import GRPC_ROUTE
from policy.rules import references_resolve, routes_on_stack_host
from scripts.modelctl.guardrails import stack_policy_settings
from tests.conftest import MANIFESTS, ROOT, STACKS, edit_yaml, shard_of
from tests.test_engine_emulation import declared, replaced

GRPC_STACKS = [
    stack
    for stack in STACKS
    if any(m.serves_grpc for m in served_in(MANIFESTS, load_stack_settings(ROOT, stack).environment))
]


def test_grpc_is_exercised_on_gateway_stacks_with_and_without_flagger():
    assert set(GRPC_STACKS) == {"local", "dev", "prod", "eks"}


@pytest.mark.parametrize("stack", GRPC_STACKS)
def test_each_grpc_model_gets_a_route_on_its_own_host_to_the_grpc_port(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    (route,) = [r.object for r in runs[stack].kubernetes_objects() if r.type == GRPC_ROUTE]
    spec = route["spec"]
    assert spec["hostnames"] == [f"iris.grpc.{settings.routing.host}"]
    assert [p["sectionName"] for p in spec["parentRefs"]] == [settings.routing.grpc.listener]
    (rule,) = spec["rules"]
    assert [m["method"]["service"] for m in rule["matches"]] == [
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    ]
    if settings.flagger:
        # Flagger's apex Service: it has the gRPC port because the Canary discovers ports.
        assert rule["backendRefs"] == [{"name": "iris", "port": 8500}]
    elif stack == "dev":  # the canary's share, as on the REST route
        assert rule["backendRefs"] == [
            {"name": "iris", "port": 8500, "weight": 90},
            {"name": "iris-canary", "port": 8500, "weight": 10},
        ]
    else:
        # A pooled model's stable version is its pool shard's Service (the `local` stack pools iris).
        pool = shard_of("iris", stack)
        assert rule["backendRefs"] == [{"name": pool.name if pool else "iris", "port": 8500}]
    assert runs[stack].outputs["models"]["iris"]["grpc"] == f"iris.grpc.{settings.routing.host}:443"


@pytest.mark.parametrize("stack", GRPC_STACKS)
def test_the_proxies_may_reach_grpc_only_of_models_that_expose_it(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    for resource in runs[stack].kubernetes_objects():
        if resource.object["kind"] != "NetworkPolicy":
            continue
        # The models' policies (Flagger's load tester's names the model label only in its egress).
        model = resource.object["spec"]["podSelector"].get("matchLabels", {}).get("model-serving.dev/model")
        if model is None:
            continue
        ports = [
            {p["port"] for p in rule["ports"]}
            for rule in resource.object["spec"]["ingress"]
            for peer in rule["from"]
            if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == settings.routing.controller_namespace
        ]
        assert ports == [{8500, 8501} if model == "iris" else {8501}], model


@pytest.mark.parametrize(
    ("stack", "change", "expected"),
    [
        ("prod", lambda p: p["spec"]["rules"][0]["backendRefs"][0].update(port=9000), "has no port 9000"),
        ("local", lambda p: p["spec"]["parentRefs"][0].update(sectionName="h2"), "names listener 'h2'"),
        ("local", lambda p: p["spec"]["parentRefs"][0].update(sectionName="https"), None),
    ],
)
def test_references_resolve_checks_grpc_routes(runs, stack, change, expected):
    settings = stack_policy_settings(ROOT, stack)
    assert references_resolve(declared(runs, stack), settings) == []
    problems = [m for _, m in references_resolve(replaced(declared(runs, stack), GRPC_ROUTE, change), settings)]
    if expected is None:
        # The REST listener admits every kind; the route attaches (a GRPCRoute host is still wrong there).
        assert problems == []
    else:
        assert any(expected in message for message in problems), problems


def test_the_grpc_listener_admits_only_grpc_routes(runs):
    settings = stack_policy_settings(ROOT, "local")
    resources = replaced(
        declared(runs, "local"),
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        lambda p: p["spec"]["parentRefs"][0].update(sectionName="grpc"),
    )
    problems = [m for _, m in references_resolve(resources, settings)]
    assert any("listener 'grpc' of Gateway models/models admits only ['GRPCRoute']" in m for m in problems), problems


def test_routes_on_stack_host_allows_one_grpc_name_per_model_and_nothing_else(runs):
    settings = stack_policy_settings(ROOT, "prod")
    (route,) = [r for r in declared(runs, "prod") if r.type == GRPC_ROUTE]
    assert routes_on_stack_host(route, settings) == []
    for host in ("iris.grpc.example.org", "a.b.grpc.models.example.com"):
        (changed,) = [r for r in replaced([route], GRPC_ROUTE, lambda p, host=host: p["spec"].update(hostnames=[host]))]
        assert routes_on_stack_host(changed, settings) == [
            f"routes host {host!r}; this stack serves only 'models.example.com' (and <model>.grpc.models.example.com "
            "for gRPC)"
        ]


def test_grpc_needs_a_gateway_stack_with_a_grpc_listener(project):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["staging"].pop("protocols"))
    edit_yaml(project / "stacks" / "Pulumi.dev.yaml", lambda d: d["config"]["model-serving:routing"].pop("grpc"))
    _, errors = validate_project(project)
    assert [(e.file, e.field, e.message) for e in errors] == [
        (
            "models/iris.yaml",
            "serving.protocols",
            "lists grpc, but stack dev has no routing.grpc (the Gateway listener for *.grpc.models.dev.example.com); "
            "add it to stacks/Pulumi.dev.yaml",
        ),
        (
            "models/iris.yaml",
            "serving.protocols",
            "lists grpc, but stack staging routes by Ingress, which has no portable gRPC routing; set "
            "environments.staging.protocols: [rest]",
        ),
    ]


def test_protocols_must_keep_rest(project):
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["serving"].update(protocols=["grpc"]))
    _, errors = validate_project(project)
    assert [(e.field, e.message[:25]) for e in errors] == [("serving.protocols", "must list `rest`: probes,")]
