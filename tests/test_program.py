"""The Pulumi program under mocks (preview=False): what each model declares in each stack."""

from __future__ import annotations

import pytest

from infra.model import tfserving
from infra.model.component import MODEL_TYPE
from infra.model.workload import SELECTOR_LABEL
from infra.offline import DeclaredResource, OfflineRun
from infra.platform.component import PLATFORM_TYPE
from infra.spec.manifest import served_in
from infra.spec.settings import load_stack_settings
from policy.engines import FLAGGER_SELECTOR_LABELS
from tests.conftest import MANIFESTS, MODEL_X_STACK, ROOT, STACKS, serving_component, shard_of

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE = "kubernetes:core/v1:Service"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
GRPC_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:GRPCRoute"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
NAMESPACE = "kubernetes:core/v1:Namespace"
READER_ROLE = "aws:iam/role:Role"
READER_POLICY = "aws:iam/rolePolicy:RolePolicy"


def served(model: str, stack: str):
    settings = load_stack_settings(ROOT, stack)
    return next(m for m in served_in(MANIFESTS, settings.environment) if m.name == model), settings


TRACKS = ("stable", "canary")
WORKLOAD_TYPES = {CONFIG_MAP, DEPLOYMENT, SERVICE, HPA, PDB}
# Monitoring and rollout resources, by name suffix.
EXTRAS = ("dashboard", "monitor", "alerts", "rollout", "success-rate", "latency-p99")


ROUTES = {HTTP_ROUTE, GRPC_ROUTE, INGRESS}


def extras(run: OfflineRun, model: str) -> dict[str, DeclaredResource]:
    component = run.find(MODEL_TYPE, model)
    kids = [r for r in run.resources if r.parent == component.urn]
    return {suffix: r for r in kids for suffix in EXTRAS if r.name == f"{model}-{suffix}"}


def children(run: OfflineRun, model: str, track: str = "stable") -> dict[str, DeclaredResource]:
    """The resources of the workload serving the model's track (the stable track includes the
    shared ones), and the model's routes with the stable track: a pooled model's stable version
    is its pool shard's workload (tests/conftest.py serving_component)."""
    component = serving_component(run, model, track)
    prefix = component.name
    kids = [r for r in run.resources if r.parent == component.urn]
    kids = [r for r in kids if r.name not in {f"{prefix}-{suffix}" for suffix in EXTRAS}]
    canary = [r for r in kids if r.name.startswith(f"{model}-canary-")]
    kids = canary if track == "canary" else [r for r in kids if r not in canary]
    if component.type != MODEL_TYPE:
        own = run.find(MODEL_TYPE, model)
        kids += [r for r in run.resources if r.parent == own.urn and r.type in ROUTES]
    by_type = {r.type: r for r in kids}
    assert len(by_type) == len(kids), "one resource of each type per model and track"
    return by_type


def named(run: OfflineRun, type_: str, name: str) -> DeclaredResource:
    (resource,) = (r for r in run.resources if r.type == type_ and r.name == name)
    return resource


def workload_name(model: str, stack: str) -> str:
    """What the stable workload's Service and ServiceAccount are named: the model, or its shard."""
    shard = shard_of(model, stack)
    return shard.name if shard else model


def tracks(model: str, stack: str) -> list[str]:
    served_model, _ = served(model, stack)
    return [t for t in TRACKS if t in served_model.version_labels]


MODEL_X_STACK_X_TRACK = [(m, s, t) for m, s in MODEL_X_STACK for t in tracks(m, s)]


def pod_spec(run: OfflineRun, model: str, track: str = "stable") -> dict:
    return children(run, model, track)[DEPLOYMENT].object["spec"]["template"]["spec"]


@pytest.mark.parametrize(("model", "stack"), MODEL_X_STACK)
def test_model_declares_its_resources_under_its_component(runs, model, stack):
    run = runs[stack]
    served_model, settings = served(model, stack)
    component = run.find(MODEL_TYPE, model)
    stack_urn = run.find(PLATFORM_TYPE, "platform").parent
    assert component.parent == stack_urn
    route = HTTP_ROUTE if settings.routing.kind.value == "gateway" else INGRESS
    # A managed store gives each model its own read role (IRSA).
    cloud = {READER_ROLE, READER_POLICY} if settings.object_store.managed else set()
    if settings.flagger:
        # Flagger creates the Services and the HTTPRoute itself.
        expected = (WORKLOAD_TYPES - {SERVICE}) | {SERVICE_ACCOUNT, NETWORK_POLICY}
    else:
        expected = WORKLOAD_TYPES | {SERVICE_ACCOUNT, NETWORK_POLICY, route}
    # A model that lists grpc gets its GRPCRoute, on Flagger stacks too.
    grpc = {GRPC_ROUTE} if served_model.serves_grpc else set()
    shard = shard_of(model, stack)
    assert run.outputs["models"][model].get("pool") == (shard.name if shard else None)
    if shard is None:
        assert set(children(run, model)) == expected | cloud | grpc
    else:
        # Its shard's ServingPool declares the workload (and its role); the model, its routes.
        pool = serving_component(run, model)
        assert pool.parent == stack_urn and pool.name == shard.name
        own = [r for r in run.resources if r.parent == component.urn and r.name not in extras(run, model)]
        assert {r.type for r in own if not r.name.startswith(f"{model}-canary-")} == (
            {route} | grpc | ({SERVICE_ACCOUNT, NETWORK_POLICY} | cloud if "canary" in tracks(model, stack) else set())
        )
        assert set(children(run, model)) == expected | cloud | grpc
        for resource in children(run, model).values():
            if resource.type not in ROUTES:
                assert resource.parent == pool.urn and resource.name.startswith(f"{shard.name}-")
    canary = children(run, model, "canary")
    assert set(canary) == (WORKLOAD_TYPES if "canary" in tracks(model, stack) else set())
    for track in tracks(model, stack):
        for resource in children(run, model, track).values():
            assert resource.name.startswith(f"{model}-") or (shard and resource.name.startswith(f"{shard.name}-"))
            if resource.is_kubernetes_object:
                assert resource.object["metadata"]["namespace"] == settings.namespace


@pytest.mark.parametrize("stack", STACKS)
def test_every_kubernetes_object_uses_the_explicit_provider(runs, stack):
    # The stacks disable default providers; a resource without ours would fail `pulumi up`.
    provider = runs[stack].find("pulumi:providers:kubernetes", "platform-kubernetes")
    objects = runs[stack].kubernetes_objects()
    assert objects
    for resource in objects:
        # A provider reference is "<provider urn>::<provider id>".
        assert resource.provider is not None, resource.urn
        assert resource.provider.rsplit("::", 1)[0] == provider.urn, resource.urn


@pytest.mark.parametrize("stack", STACKS)
def test_provider_targets_the_stack_cluster_or_renders(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    provider = runs[stack].find("pulumi:providers:kubernetes", "platform-kubernetes").inputs
    if settings.rendering:
        assert provider["renderYamlToDirectory"] == settings.kubernetes.render_dir
        assert "context" not in provider
    elif settings.kubernetes is None:
        # An EKS stack: the cluster's kubeconfig feeds the provider.
        cluster = runs[stack].find("eks:index:Cluster", "platform-eks")
        assert provider["kubeconfig"] == cluster.state["kubeconfigJson"]
        assert "context" not in provider
    else:
        assert provider["context"] == settings.kubernetes.context
        assert "renderYamlToDirectory" not in provider


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_autoscaler_targets_the_deployment(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    served_model, _ = served(model, stack)
    spec = kids[HPA].object["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": kids[DEPLOYMENT].object["metadata"]["name"],
    }
    # A pool scales as its stack setting says, whatever its members' manifests ask.
    shard = shard_of(model, stack) if track == "stable" else None
    scaling = shard.pool.autoscaling if shard else served_model.serving.autoscaling
    assert spec["minReplicas"] == scaling.min_replicas
    assert spec["maxReplicas"] == scaling.max_replicas
    # The HPA owns the replica count.
    assert "replicas" not in kids[DEPLOYMENT].object["spec"]


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_service_selects_the_pods_and_exposes_both_ports(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    if load_stack_settings(ROOT, stack).flagger:
        assert SERVICE not in kids
        assert extras(runs[stack], model)["rollout"].object["spec"]["service"]["name"] == model
        return
    service = kids[SERVICE].object
    template_labels = kids[DEPLOYMENT].object["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= template_labels.items()
    assert selector == kids[DEPLOYMENT].object["spec"]["selector"]["matchLabels"]
    assert service["metadata"]["name"] == (workload_name(model, stack) if track == "stable" else f"{model}-canary")
    if track == "canary":
        # The stable Service must not select the canary's pods, nor the reverse.
        stable = children(runs[stack], model)
        stable_selector = stable[SERVICE].object["spec"]["selector"]
        assert not stable_selector.items() <= template_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 8500 and ports["http"]["port"] == 8501
    container = pod_spec(runs[stack], model, track)["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[ports["http"]["targetPort"]] == 8501
    assert named[ports["grpc"]["targetPort"]] == 8500


@pytest.mark.parametrize("stack", STACKS)
def test_each_workload_is_selected_by_a_label_unique_to_it_that_flagger_uses(runs, stack):
    """Flagger takes the first of app, name, app.kubernetes.io/name from the target's selector
    and builds every Service from it: that label must differ between models (issue: prod and
    eks routed one model's requests to another's pods)."""
    every = [r for r in runs[stack].kubernetes_objects() if r.type == DEPLOYMENT]
    selectors = [d.object["spec"]["selector"]["matchLabels"] for d in every]
    assert selectors and all(list(s) == [SELECTOR_LABEL] for s in selectors)
    assert FLAGGER_SELECTOR_LABELS[0] == SELECTOR_LABEL
    values = [s[SELECTOR_LABEL] for s in selectors]
    assert len(set(values)) == len(values)
    # Flagger's load tester (stacks with Flagger) is the platform's, not a model's.
    deployments = [d for d in every if d.name != "platform-loadtester"]
    for deployment in deployments:
        labels = deployment.object["spec"]["template"]["metadata"]["labels"]
        # The labels that selected the pods before stay on them, so a Service still using
        # them during the upgrade reaches the new pods too.
        assert labels["app.kubernetes.io/name"] == "tensorflow-serving"
        assert labels["app.kubernetes.io/instance"] == labels[SELECTOR_LABEL]


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_service_switches_only_after_its_deployment(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    if SERVICE in kids:
        assert kids[DEPLOYMENT].urn in kids[SERVICE].dependencies


@pytest.mark.parametrize(("model", "stack"), MODEL_X_STACK)
def test_route_sends_the_model_path_to_the_rest_port(runs, model, stack):
    kids = children(runs[stack], model)
    _, settings = served(model, stack)
    if settings.flagger:
        service = extras(runs[stack], model)["rollout"].object["spec"]["service"]
        assert service["match"] == [{"uri": {"prefix": f"/v1/models/{model}"}}] + [
            {"uri": {"exact": f"/v1/models/{model}:{verb}"}} for verb in ("predict", "classify", "regress")
        ]
        assert service["hosts"] == [settings.routing.host] and service["port"] == 8501
        assert service["gatewayRefs"][0]["name"] == settings.routing.gateway.name
        assert HTTP_ROUTE not in kids
        return
    service = kids[SERVICE].object
    http_port = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    if settings.routing.kind.value == "gateway":
        route = kids[HTTP_ROUTE].object
        assert route["spec"]["hostnames"] == [settings.routing.host]
        (parent,) = route["spec"]["parentRefs"]
        assert parent["name"] == settings.routing.gateway.name
        assert parent.get("namespace") == settings.routing.gateway.namespace
        (rule,) = route["spec"]["rules"]
        assert rule["matches"][0] == {"path": {"type": "PathPrefix", "value": f"/v1/models/{model}"}}
        for path in SERVED_PATHS:
            assert any(
                path_matched(m["path"]["type"], m["path"]["value"], path.format(model=model)) for m in rule["matches"]
            )
        for path in OTHER_MODELS_PATHS:
            assert not any(
                path_matched(m["path"]["type"], m["path"]["value"], path.format(model=model)) for m in rule["matches"]
            )
        served_model, _ = served(model, stack)
        if served_model.has_canary:
            canary = children(runs[stack], model, "canary")[SERVICE].object
            weight = served_model.canary_weight
            assert rule["backendRefs"] == [
                {"name": service["metadata"]["name"], "port": http_port["port"], "weight": 100 - weight},
                {"name": canary["metadata"]["name"], "port": http_port["port"], "weight": weight},
            ]
            assert sum(b["weight"] for b in rule["backendRefs"]) == 100
        else:
            assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": http_port["port"]}]
    else:
        ingress = kids[INGRESS].object
        assert ingress["spec"]["ingressClassName"] == settings.routing.ingress_class_name
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == settings.routing.host
        paths = rule["http"]["paths"]
        assert paths[0]["path"] == f"/v1/models/{model}" and paths[0]["pathType"] == "Prefix"
        for path in SERVED_PATHS:
            assert any(path_matched(p["pathType"], p["path"], path.format(model=model)) for p in paths)
        for path in OTHER_MODELS_PATHS:
            assert not any(path_matched(p["pathType"], p["path"], path.format(model=model)) for p in paths)
        for path in paths:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] == {"name": http_port["name"]}


# What clients call on a model (TF-Serving g3doc/api_rest.md), and what belongs to another model.
SERVED_PATHS = (
    "/v1/models/{model}",
    "/v1/models/{model}/metadata",
    "/v1/models/{model}:predict",
    "/v1/models/{model}:classify",
    "/v1/models/{model}:regress",
    "/v1/models/{model}/versions/3:predict",
    "/v1/models/{model}/labels/stable:predict",
)
OTHER_MODELS_PATHS = ("/v1/models/{model}2", "/v1/models/{model}2:predict", "/v1/models/{model}-x/metadata")


def path_matched(match_type: str, value: str, path: str) -> bool:
    """Gateway API and Ingress path matching: Exact, or a prefix of whole `/`-separated elements
    ("the paths `/abc`, `/abc/`, and `/abc/def` would all match the prefix `/abc`, but the path
    `/abcd` would not", gateway-api v1.6.1 httproutes.yaml; Ingress `Prefix` likewise)."""
    if match_type == "Exact":
        return path == value
    assert match_type in ("PathPrefix", "Prefix"), match_type
    prefix = value.rstrip("/").split("/")
    return path.rstrip("/").split("/")[: len(prefix)] == prefix


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_init_container_fetches_exactly_the_served_versions(runs, model, stack, track):
    served_model, settings = served(model, stack)
    (fetcher,) = pod_spec(runs[stack], model, track)["initContainers"]
    version = served_model.version_labels[track]
    digest = served_model.manifest.versions[version].digest
    env = {e["name"]: e.get("value") for e in fetcher["env"]}
    store = settings.object_store
    source = f"s3://{store.bucket}/{store.prefix}/{served_model.manifest.artifact.path}"
    shard = shard_of(model, stack) if track == "stable" else None
    if shard is None:
        # Each workload fetches only the version it serves.
        assert fetcher["args"] == [f"{version}={digest}"]
        assert env["MODEL_SOURCE"] == source
        assert env["MODEL_DIR"] == f"/models/{model}"
    else:
        # A pool fetches each member's stable version, the members' sources listed in its ConfigMap.
        members = [served(m, stack)[0] for m in shard.member_names]
        assert fetcher["args"] == [
            f"{tfserving.CONFIG_DIR}/{tfserving.FETCH_LIST}",
            *(
                f"{m.name}@{m.version_labels['stable']}={m.manifest.versions[m.version_labels['stable']].digest}"
                for m in members
            ),
        ]
        assert f"{model}@{version}={digest}" in fetcher["args"]
        fetch_list = children(runs[stack], model)[CONFIG_MAP].object["data"][tfserving.FETCH_LIST]
        assert f"{model} /models/{model} {source}\n" in fetch_list
        assert len(fetch_list.splitlines()) == len(members)
        assert "MODEL_SOURCE" not in env and "MODEL_DIR" not in env
    assert env.get("S3_ENDPOINT") == store.endpoint
    assert fetcher["image"] == settings.images.fetcher


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_pods_meet_the_restricted_pod_security_standard(runs, model, stack, track):
    spec = pod_spec(runs[stack], model, track)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    for container in spec["containers"] + spec["initContainers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] > 10000
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert set(container["resources"]["limits"]) >= {"cpu", "memory"}
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "configMap"}, "restricted allows no hostPath"


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_server_rolls_without_dropping_requests(runs, model, stack, track):
    served_model, settings = served(model, stack)
    deployment = children(runs[stack], model, track)[DEPLOYMENT].object
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
    }
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    shard = shard_of(model, stack) if track == "stable" else None
    # A pool opens its ports once every member is loaded: its first member's version answers for all.
    probed = served(shard.member_names[0], stack)[0] if shard else served_model
    version = probed.version_labels[track]
    assert server["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{probed.name}/versions/{version}/metadata"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if shard is None:
        assert labels["model-serving.dev/version"] == str(version)
    else:
        assert "model-serving.dev/version" not in labels and labels["model-serving.dev/pool"] == shard.name
    assert server["livenessProbe"]["httpGet"]["path"] == f"/v1/models/{probed.name}"
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert server["image"] == settings.images.serving
    assert f"--model_config_file={tfserving.CONFIG_DIR}/{tfserving.MODELS_CONFIG}" in server["args"]
    batching = shard.pool.batching if shard else served_model.serving.batching
    assert ("--enable_batching=true" in server["args"]) == (batching is not None)


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_pod_template_mounts_its_config_map(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    spec = kids[DEPLOYMENT].object["spec"]["template"]["spec"]
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == kids[CONFIG_MAP].object["metadata"]["name"]
    assert kids[CONFIG_MAP].object["immutable"] is True
    owner = workload_name(model, stack) if track == "stable" else model
    account = named(runs[stack], SERVICE_ACCOUNT, f"{owner}-sa").object["metadata"]["name"]
    assert spec["serviceAccountName"] == account == owner


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_disruption_budget_and_network_policy_select_the_pods(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    selector = kids[DEPLOYMENT].object["spec"]["selector"]["matchLabels"]
    budget = kids[PDB].object["spec"]["selector"]["matchLabels"]
    if load_stack_settings(ROOT, stack).flagger:
        # Flagger's `-primary` clone rewrites selector labels; the model label stays.
        assert budget == {"model-serving.dev/model": model}
    else:
        assert budget == selector
    owner = workload_name(model, stack) if track == "stable" else model
    policy = named(runs[stack], NETWORK_POLICY, f"{owner}-netpol").object["spec"]
    template_labels = kids[DEPLOYMENT].object["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= template_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    _, settings = served(model, stack)
    allowed_from = [p.get("namespaceSelector", {}).get("matchLabels", {}) for r in policy["ingress"] for p in r["from"]]
    assert {"kubernetes.io/metadata.name": settings.routing.controller_namespace} in allowed_from


@pytest.mark.parametrize("stack", STACKS)
def test_platform_declares_namespace_default_deny_and_gateway(runs, stack):
    run = runs[stack]
    settings = load_stack_settings(ROOT, stack)
    platform = run.find(PLATFORM_TYPE, "platform")
    kids = [r for r in run.resources if r.parent == platform.urn]
    namespace = next(r for r in kids if r.type == NAMESPACE).object
    assert namespace["metadata"]["name"] == settings.namespace
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policies = [r.object["spec"] for r in kids if r.type == NETWORK_POLICY]
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies
    gateways = [r.object for r in kids if r.type == GATEWAY]
    wants_gateway = settings.routing.gateway is not None and settings.routing.gateway.create
    assert len(gateways) == (1 if wants_gateway else 0)
    if gateways:
        listener, *grpc = gateways[0]["spec"]["listeners"]
        assert listener["hostname"] == settings.routing.host
        assert listener["protocol"] == "HTTPS" and listener["port"] == 443
        assert listener["tls"]["certificateRefs"] == [{"kind": "Secret", "name": settings.routing.tls_secret_name}]
        # gRPC: one wildcard HTTPS listener (HTTP/2 by ALPN) for <model>.grpc.<host>, GRPCRoutes only.
        assert grpc == (
            [
                {
                    "name": settings.routing.grpc.listener,
                    "protocol": "HTTPS",
                    "port": 443,
                    "hostname": f"*.grpc.{settings.routing.host}",
                    "tls": {
                        "mode": "Terminate",
                        "certificateRefs": [{"kind": "Secret", "name": settings.routing.grpc.tls_secret_name}],
                    },
                    "allowedRoutes": {
                        "namespaces": {"from": "Same"},
                        "kinds": [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}],
                    },
                }
            ]
            if settings.routing.grpc
            else []
        )


@pytest.mark.parametrize("stack", STACKS)
def test_stack_exports_url_and_versions_per_model(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    exported = runs[stack].outputs["models"]
    expected = {m.name: m for m in served_in(MANIFESTS, settings.environment)}
    assert set(exported) == set(expected)
    for name, model in expected.items():
        assert exported[name]["url"] == f"https://{settings.routing.host}/v1/models/{name}"
        assert exported[name]["versions"] == dict(model.version_labels)


def test_a_model_not_served_in_an_environment_declares_nothing_there(project):
    from tests.conftest import edit_yaml

    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"].pop("prod"))
    from infra.offline import run_stack

    prod = run_stack(project, "prod")
    assert not [r for r in prod.resources if r.name.startswith("iris")]
    assert prod.find(MODEL_TYPE, "taxi-fare")
    assert set(prod.outputs["models"]) == {"taxi-fare"}
    assert run_stack(project, "dev").find(MODEL_TYPE, "iris")


def test_manifest_environments_are_checked_against_every_stacks_environment(project):
    """A stack serves `model-serving:environment`, not its name: with the `prod` stack file gone,
    `prod` is still served by the eks stack, so every stack's program accepts the manifests
    (it used to check stack names and refuse them)."""
    from infra.offline import run_stack

    (project / "stacks" / "Pulumi.prod.yaml").unlink()
    assert run_stack(project, "eks").find(MODEL_TYPE, "iris")
    assert run_stack(project, "dev").find(MODEL_TYPE, "iris")
