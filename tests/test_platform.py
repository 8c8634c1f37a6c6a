"""The platform from the same repository: EKS mode, the managed bucket and its IAM, add-ons, GPU models."""

from __future__ import annotations

import json

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.offline import run_stack
from infra.platform import addons
from infra.platform import cluster as node_pools
from infra.spec.settings import load_stack_settings
from tests.conftest import ROOT, STACKS, edit_yaml
from tests.test_program import DEPLOYMENT, HPA, children, extras

EKS_STACKS = [s for s in STACKS if load_stack_settings(ROOT, s).cluster.mode.value == "eks"]
MANAGED_STACKS = [s for s in STACKS if load_stack_settings(ROOT, s).object_store.managed]
RELEASE = "kubernetes:helm.sh/v3:Release"


def platform_children(run, type_: str):
    platform = run.find("model-serving:platform:Platform", "platform")
    return [r for r in run.resources if r.parent == platform.urn and r.type == type_]


def test_there_is_an_eks_stack_with_a_managed_store():
    assert EKS_STACKS and set(EKS_STACKS) <= set(MANAGED_STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_each_cluster_mode_declares_what_it_should(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    run = runs[stack]
    clusters = platform_children(run, "eks:index:Cluster")
    groups = {r.name: r.inputs for r in platform_children(run, "eks:index:ManagedNodeGroup")}
    if settings.cluster.mode.value == "existing":
        assert clusters == [] and groups == {}
        assert not platform_children(run, "pulumi:providers:aws") or settings.object_store.managed
        return
    (cluster,) = clusters
    assert cluster.inputs["version"] == settings.cluster.eks.kubernetes_version
    assert cluster.inputs["createOidcProvider"] is True and cluster.inputs["skipDefaultNodeGroup"] is True
    cpu = groups["platform-cpu-nodes"]
    assert cpu["labels"] == {node_pools.NODE_POOL_LABEL: "cpu"} and "taints" not in cpu
    assert cpu["scalingConfig"]["desiredSize"] == settings.cluster.eks.cpu_nodes.desired_size
    gpu = groups["platform-gpu-nodes"]
    # The device plugin's default node affinity accepts nvidia.com/gpu.present=true; the Cluster
    # Autoscaler counts a node with k8s.amazonaws.com/accelerator as a GPU node before the plugin
    # registers (its AWS README, "Special note on GPU instances"); g5 carries NVIDIA A10G GPUs.
    assert gpu["gpu"] is True and gpu["labels"] == {
        node_pools.NODE_POOL_LABEL: "gpu",
        "nvidia.com/gpu.present": "true",
        "k8s.amazonaws.com/accelerator": "nvidia-tesla-a10g",
    }
    assert settings.cluster.eks.gpu_nodes.instance_type == "g5.xlarge"
    # The Cluster Autoscaler owns desiredSize: pulumi-eks then ignores its changes.
    autoscaled = settings.addons.cluster_autoscaler
    assert autoscaled and cpu["ignoreScalingChanges"] is True and gpu["ignoreScalingChanges"] is True
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert gpu["scalingConfig"]["desiredSize"] == 0 == settings.cluster.eks.gpu_nodes.desired_size
    attached = {
        r.inputs["policyArn"] for r in platform_children(run, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    assert attached == set(node_pools.EKS_NODE_POLICIES)


@pytest.mark.parametrize("stack", MANAGED_STACKS)
def test_no_deprecated_aws_resource_is_declared(runs, stack):
    # pulumi-aws v7: Bucket, BucketVersioning, ... are current; their *V2 twins are deprecated.
    aws_types = {r.type for r in runs[stack].resources if r.type.startswith("aws:")}
    assert aws_types and not [t for t in aws_types if t.lower().endswith("v2")]


@pytest.mark.parametrize("stack", MANAGED_STACKS)
def test_the_managed_bucket_is_hardened(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    run = runs[stack]

    def one(type_):
        (resource,) = platform_children(run, type_)
        return resource.inputs

    assert one("aws:s3/bucket:Bucket")["bucket"] == settings.object_store.bucket
    assert one("aws:s3/bucketVersioning:BucketVersioning")["versioningConfiguration"] == {"status": "Enabled"}
    (rule,) = one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    block = one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    tls = IAMPolicy(one("aws:s3/bucketPolicy:BucketPolicy")["policy"])
    bucket_objects = f"arn:aws:s3:::{settings.object_store.bucket}/serving/iris/1/saved_model.pb"
    assert (
        tls.is_action_permitted("s3:GetObject", bucket_objects, None, {"aws:SecureTransport": "false"})
        == PermissionResult.DENIED
    )
    (lifecycle,) = one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    assert lifecycle["noncurrentVersionExpiration"] == {"noncurrentDays": settings.object_store.noncurrent_version_days}


@pytest.mark.parametrize("stack", MANAGED_STACKS)
@pytest.mark.parametrize("model", ["iris", "taxi-fare"])
def test_each_model_reads_only_its_own_prefix(runs, stack, model):
    settings = load_stack_settings(ROOT, stack)
    kids = children(runs[stack], model)
    policy = IAMPolicy(kids["aws:iam/rolePolicy:RolePolicy"].inputs["policy"])
    document = json.loads(kids["aws:iam/rolePolicy:RolePolicy"].inputs["policy"])
    bucket = f"arn:aws:s3:::{settings.object_store.bucket}"
    own = {"iris": "serving/iris/", "taxi-fare": "serving/pricing/taxi-fare/"}[model]
    neighbour = {"iris": "serving/pricing/taxi-fare/", "taxi-fare": "serving/iris/"}[model]
    assert policy.is_action_permitted("s3:GetObject", f"{bucket}/{own}3/saved_model.pb") == PermissionResult.PERMITTED
    assert (
        policy.is_action_permitted("s3:GetObject", f"{bucket}/{neighbour}3/saved_model.pb")
        != PermissionResult.PERMITTED
    )
    assert policy.is_action_permitted("s3:GetObject", f"{bucket}/serving/iris-xl/1/x") != PermissionResult.PERMITTED
    for write in ("s3:PutObject", "s3:DeleteObject", "s3:PutBucketPolicy"):
        assert policy.is_action_permitted(write, f"{bucket}/{own}3/saved_model.pb") != PermissionResult.PERMITTED
    # Exactly two grants: GetObject on the prefix, ListBucket limited to the prefix.
    grants = {(tuple(s["Action"]), tuple(s["Resource"])) for s in document["Statement"]}
    assert grants == {(("s3:GetObject",), (f"{bucket}/{own}*",)), (("s3:ListBucket",), (bucket,))}
    listing = next(s for s in document["Statement"] if s["Action"] == ["s3:ListBucket"])
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{own}*"]}}
    # The role trusts only the model's ServiceAccount, and the ServiceAccount names the role.
    role = kids["aws:iam/role:Role"]
    trust = json.loads(role.inputs["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    (conditions,) = statement["Condition"].values()
    assert f"system:serviceaccount:{settings.namespace}:{model}" in conditions.values()
    account = kids["kubernetes:core/v1:ServiceAccount"].object
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role.state["arn"]


@pytest.mark.parametrize("stack", MANAGED_STACKS)
def test_the_publisher_writes_new_versions_but_never_deletes(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    (policy,) = platform_children(runs[stack], "aws:iam/policy:Policy")
    publisher = IAMPolicy(policy.inputs["policy"])
    key = f"arn:aws:s3:::{settings.object_store.bucket}/serving/iris/9/saved_model.pb"
    assert publisher.is_action_permitted("s3:PutObject", key) == PermissionResult.PERMITTED
    assert publisher.is_action_permitted("s3:GetObject", key) == PermissionResult.PERMITTED
    assert publisher.is_action_permitted("s3:DeleteObject", key) == PermissionResult.DENIED
    assert publisher.is_action_permitted("s3:DeleteObjectVersion", key) == PermissionResult.DENIED
    outside = f"arn:aws:s3:::{settings.object_store.bucket}/elsewhere/x"
    assert publisher.is_action_permitted("s3:PutObject", outside) != PermissionResult.PERMITTED


@pytest.mark.parametrize("stack", STACKS)
def test_add_on_charts_are_pinned_and_switched_by_the_stack(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    releases = {r.name.removeprefix("platform-"): r.inputs for r in platform_children(runs[stack], RELEASE)}
    wanted = settings.addons
    expected = {
        name
        for name, enabled in (
            ("envoy-gateway", wanted.envoy_gateway),
            ("metrics-server", wanted.metrics_server),
            ("kube-prometheus-stack", wanted.kube_prometheus_stack),
            ("flagger", wanted.flagger),
            ("cluster-autoscaler", wanted.cluster_autoscaler),
            ("nvidia-device-plugin", settings.cluster.eks is not None and settings.cluster.eks.gpu_nodes is not None),
        )
        if enabled
    }
    assert set(releases) == expected
    for release in releases.values():
        assert addons.EXACT_CHART_VERSION.match(release["version"]), release["version"]


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_models_wait_for_the_add_ons_they_need(runs, stack):
    run = runs[stack]
    releases = {r.name.removeprefix("platform-"): r.urn for r in platform_children(run, RELEASE)}
    namespace = run.find("kubernetes:core/v1:Namespace", "platform-namespace").urn
    for model in ("iris", "taxi-fare"):
        kids, more = children(run, model), extras(run, model)
        for resource in list(kids.values()) + list(more.values()):
            if resource.is_kubernetes_object:
                assert namespace in resource.dependencies, resource.name
        assert releases["metrics-server"] in kids[HPA].dependencies
        assert releases["kube-prometheus-stack"] in more["monitor"].dependencies
        assert releases["kube-prometheus-stack"] in more["alerts"].dependencies
        assert releases["flagger"] in more["rollout"].dependencies
        assert releases["envoy-gateway"] in more["rollout"].dependencies


def test_gpu_scheduling_appears_only_for_gpu_models(project):
    def gpu_in_prod(document):
        document["environments"]["prod"]["resources"] = {"gpu": 1}

    edit_yaml(project / "models" / "iris.yaml", gpu_in_prod)
    # prod's existing cluster declares its GPU nodes and image; the eks stack has a GPU node group.
    edit_yaml(
        project / "stacks" / "Pulumi.prod.yaml",
        lambda d: (
            d["config"].update({"model-serving:cluster": {"gpuNodes": True}}),
            d["config"]["model-serving:images"].update({"servingGpu": "docker.io/tensorflow/serving:2.19.1-gpu"}),
            # A priced stack with GPU nodes prices GPU hours too (infra/spec/prices.py).
            d["config"]["model-serving:prices"].update({"gpuHour": 1.0}),
        ),
    )
    for stack in ("prod", "eks", "dev"):
        run = run_stack(project, stack)
        for model in ("iris", "taxi-fare"):
            spec = children(run, model)[DEPLOYMENT].object["spec"]["template"]["spec"]
            (server,) = spec["containers"]
            gpu = model == "iris" and stack in ("prod", "eks")
            assert ("nvidia.com/gpu" in server["resources"]["limits"]) == gpu, (stack, model)
            assert ("nodeSelector" in spec) == gpu and ("tolerations" in spec) == gpu
            assert server["image"].endswith("-gpu") == gpu
            if gpu:
                assert (
                    server["resources"]["requests"]["nvidia.com/gpu"] == server["resources"]["limits"]["nvidia.com/gpu"]
                )
                assert spec["nodeSelector"] == {node_pools.NODE_POOL_LABEL: "gpu"}
                assert spec["tolerations"] == [
                    {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
                ]


def test_a_gpu_model_on_a_stack_without_gpu_nodes_is_refused(project, capsys):
    from scripts.modelctl.cli import main

    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"resources": {"gpu": 1}}))
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    assert "models/iris.yaml: serving.resources.gpu: stack prod has no GPU nodes" in err
    assert "stack eks" not in err, "the eks stack has a GPU node group"


def test_a_version_bump_on_the_eks_stack_touches_only_the_models_resources(project, runs):
    from scripts.modelctl.plan import plan_stack

    edit_yaml(project / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 3}))
    plan = plan_stack("eks", runs["eks"], run_stack(project, "eks"))
    assert {(s.name, s.op.value) for s in plan.changes} == {("iris-config", "replace"), ("iris-deployment", "update")}
    assert {s.component for s in plan.steps if s.type.startswith(("aws:", "eks:"))} >= {"platform"}


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_the_gateway_waits_for_the_gateway_api_crds(runs, stack):
    run = runs[stack]
    gateway = run.find("kubernetes:gateway.networking.k8s.io/v1:Gateway", "platform-gateway")
    envoy = run.find(RELEASE, "platform-envoy-gateway")
    assert envoy.urn in gateway.dependencies


# --- engine fidelity on EKS: providers, bootstrap, GatewayClass, device plugin, autoscaler, VPC CNI ---

GATEWAY_CLASS = "kubernetes:gateway.networking.k8s.io/v1:GatewayClass"
EKS_PROVIDER = "$pulumi:providers:eks::"
AWS_PROVIDER = "$pulumi:providers:aws::"


def provider_requests(monkeypatch) -> dict[tuple[str, str], tuple[str, dict[str, str]]]:
    """(type, name) -> (RegisterResourceRequest.provider, .providers) of every registration."""
    from infra import offline

    seen: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    original = offline._RecordingMonitor.RegisterResource

    def recording(self, request):
        seen[(request.type, request.name)] = (request.provider, dict(request.providers))
        return original(self, request)

    monkeypatch.setattr(offline._RecordingMonitor, "RegisterResource", recording)
    return seen


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_every_eks_component_names_an_explicit_eks_provider(stack, monkeypatch):
    """With default providers disabled the engine refuses eks:index:Cluster without an explicit eks
    provider (pulumi/pulumi-eks#917). For a remote component the Python SDK sends the provider of
    the component's own package as RegisterResourceRequest.provider and every package's provider in
    RegisterResourceRequest.providers (pulumi/runtime/resource.py prepare_resource). Fails on the
    code before the eks provider was declared: both were empty of eks."""
    seen = provider_requests(monkeypatch)
    run = run_stack(ROOT, stack)
    components = [r for r in run.resources if r.type.startswith("eks:")]
    assert {r.type for r in components} == {"eks:index:Cluster", "eks:index:ManagedNodeGroup"}
    for resource in components:
        provider, providers = seen[(resource.type, resource.name)]
        assert EKS_PROVIDER in (resource.provider or "") and provider == resource.provider, resource.name
        assert EKS_PROVIDER in providers["eks"] and AWS_PROVIDER in providers["aws"], resource.name
    # Every other custom resource names a provider of its own package (Helm releases included).
    for resource in run.resources:
        if resource.custom and not resource.type.startswith("pulumi:providers:"):
            package = resource.type.split(":")[0]
            assert f"$pulumi:providers:{package}::" in (resource.provider or ""), resource.name


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_the_vpc_cni_enforces_network_policy(runs, stack):
    (cluster,) = platform_children(runs[stack], "eks:index:Cluster")
    assert cluster.inputs["vpcCniOptions"]["enableNetworkPolicy"] is True


def _bootstrap(project, value=True):
    edit_yaml(project / "stacks" / "Pulumi.eks.yaml", lambda d: d["config"].update({"model-serving:bootstrap": value}))


@pytest.mark.parametrize("written", [True, "true"], ids=["yaml-bool", "pulumi-config-set"])
def test_bootstrap_declares_the_platform_only(project, monkeypatch, caplog, written):
    """Fails before `bootstrap` existed: the setting was unknown, and the first `pulumi up` checked
    artifacts in the bucket the same run creates."""
    from infra import program
    from infra.model import artifacts

    def no_store(*_args, **_kwargs):
        raise AssertionError("the artifact check ran against a bucket that does not exist yet")

    monkeypatch.setattr(artifacts, "verify_served_versions", no_store)
    _bootstrap(project, written)
    run = run_stack(project, "eks", entry=program.main)
    types = {r.type for r in run.resources}
    assert "model-serving:model:ModelDeployment" not in types
    # No model workload; Flagger's load tester belongs to the platform, like the add-ons.
    assert [r.name for r in run.resources if r.type in (DEPLOYMENT, HPA)] == ["platform-loadtester"]
    assert {"eks:index:Cluster", "aws:s3/bucket:Bucket", "aws:iam/policy:Policy", RELEASE} <= types
    assert run.outputs["models"] == {} and run.outputs["bootstrap"] is True
    assert any("bootstrap: stack eks declares the platform only" in m for m in caplog.messages)


def test_bootstrap_on_a_stack_whose_store_exists_is_refused(project):
    from infra.spec.errors import ConfigError

    edit_yaml(project / "stacks" / "Pulumi.prod.yaml", lambda d: d["config"].update({"model-serving:bootstrap": True}))
    with pytest.raises(ConfigError) as caught:
        load_stack_settings(project, "prod")
    (item,) = caught.value.errors
    assert (item.file, item.field) == ("stacks/Pulumi.prod.yaml", "config.model-serving:bootstrap")
    assert "objectStore.managed" in item.message


# The GatewayClass CRD's v1 schema (kubernetes-sigs/gateway-api config/crd/standard/
# gateway.networking.k8s.io_gatewayclasses.yaml, bundle v1.6.0-rc.1 at 00cfc55; tests/schemas has
# no gatewayclasses CRD): `spec` required, `spec.controllerName` required, 1-253 characters, this pattern.
CONTROLLER_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"


@pytest.mark.parametrize("stack", STACKS)
def test_a_stack_that_installs_envoy_gateway_declares_the_gateway_class(runs, stack):
    import re

    settings = load_stack_settings(ROOT, stack)
    run = runs[stack]
    classes = [r for r in run.resources if r.type == GATEWAY_CLASS]
    gateway = settings.routing.gateway
    if not (settings.addons.envoy_gateway and gateway is not None and gateway.create):
        assert classes == []
        return
    (gateway_class,) = classes
    obj = gateway_class.object
    assert (obj["apiVersion"], obj["kind"]) == ("gateway.networking.k8s.io/v1", "GatewayClass")
    assert obj["metadata"]["name"] == gateway.class_name and "namespace" not in obj["metadata"]
    assert set(obj["spec"]) == {"controllerName"}
    assert obj["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    assert re.match(CONTROLLER_NAME, obj["spec"]["controllerName"]) and len(obj["spec"]["controllerName"]) <= 253
    envoy = run.find(RELEASE, "platform-envoy-gateway")
    declared_gateway = run.find("kubernetes:gateway.networking.k8s.io/v1:Gateway", "platform-gateway")
    assert envoy.urn in gateway_class.dependencies
    assert gateway_class.urn in declared_gateway.dependencies
    assert declared_gateway.object["spec"]["gatewayClassName"] == obj["metadata"]["name"]


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_a_gpu_pool_gets_the_nvidia_device_plugin(runs, stack):
    release = runs[stack].find(RELEASE, "platform-nvidia-device-plugin").inputs
    assert (release["chart"], release["version"]) == ("nvidia-device-plugin", "0.17.4")
    assert release["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert release["namespace"] in ("kube-system", "nvidia-device-plugin")


def test_no_gpu_pool_no_device_plugin(project):
    edit_yaml(
        project / "stacks" / "Pulumi.eks.yaml", lambda d: d["config"]["model-serving:cluster"]["eks"].pop("gpuNodes")
    )
    run = run_stack(project, "eks")
    assert not [r for r in run.resources if r.name == "platform-nvidia-device-plugin"]
    assert [r.name for r in run.resources if r.type == "eks:index:ManagedNodeGroup"] == ["platform-cpu-nodes"]


@pytest.mark.parametrize("stack", EKS_STACKS)
def test_the_cluster_autoscaler_has_its_own_role(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    run = runs[stack]
    (cluster,) = platform_children(run, "eks:index:Cluster")
    release = run.find(RELEASE, "platform-cluster-autoscaler")
    inputs = release.inputs
    assert (inputs["chart"], inputs["version"], inputs["namespace"]) == ("cluster-autoscaler", "9.59.0", "kube-system")
    assert inputs["repositoryOpts"] == {"repo": "https://kubernetes.github.io/autoscaler"}
    role = run.find("aws:iam/role:Role", "platform-cluster-autoscaler")
    values = inputs["values"]
    assert values["autoDiscovery"] == {"clusterName": cluster.inputs["name"]}
    assert values["awsRegion"] == settings.object_store.region
    account = values["rbac"]["serviceAccount"]
    assert account["annotations"] == {"eks.amazonaws.com/role-arn": role.state["arn"]}
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    (conditions,) = statement["Condition"].values()
    assert f"system:serviceaccount:kube-system:{account['name']}" in conditions.values()
    policy = json.loads(
        run.find("aws:iam/rolePolicy:RolePolicy", "platform-cluster-autoscaler-policy").inputs["policy"]
    )
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {
        "autoscaling:SetDesiredCapacity",
        "eks:DescribeNodegroup",
        "autoscaling:DescribeAutoScalingGroups",
    } <= actions
    scale = next(s for s in policy["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"])
    assert scale["Condition"] == {
        "Null": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster.inputs['name']}": "false"}
    }


def test_the_cluster_autoscaler_is_switched_by_the_stack(project):
    from infra.spec.errors import ConfigError

    edit_yaml(
        project / "stacks" / "Pulumi.eks.yaml",
        lambda d: d["config"]["model-serving:addons"].update({"clusterAutoscaler": False}),
    )
    run = run_stack(project, "eks")
    assert not [r for r in run.resources if "cluster-autoscaler" in r.name]
    edit_yaml(
        project / "stacks" / "Pulumi.prod.yaml",
        lambda d: d["config"].setdefault("model-serving:addons", {}).update({"clusterAutoscaler": True}),
    )
    with pytest.raises(ConfigError, match=r"config.model-serving:addons.clusterAutoscaler: only for cluster.mode: eks"):
        load_stack_settings(project, "prod")


@pytest.mark.parametrize("stack", STACKS)
def test_a_stacks_add_on_values_merge_over_the_charts_defaults(runs, stack):
    settings = load_stack_settings(ROOT, stack)
    releases = {r.name.removeprefix("platform-"): r.inputs for r in platform_children(runs[stack], RELEASE)}
    for chart in (addons.ENVOY_GATEWAY, addons.METRICS_SERVER, addons.KUBE_PROMETHEUS_STACK, addons.FLAGGER):
        if chart.name in releases:
            expected = addons.merged_values(chart.values, settings.addons.values.get(chart.name, {}))
            assert releases[chart.name].get("values", {}) == expected


def test_kind_clusters_metrics_server_skips_kubelet_certificate_checks(runs):
    # kind's kubelets serve self-signed certificates (see stacks/Pulumi.kind.yaml).
    for stack in ("kind", "kind-flagger"):
        release = next(r for r in platform_children(runs[stack], RELEASE) if r.name == "platform-metrics-server")
        assert release.inputs["values"]["args"] == ["--kubelet-insecure-tls"]
    prometheus = next(r for r in platform_children(runs["kind-flagger"], RELEASE) if "prometheus" in r.name)
    grafana = prometheus.inputs["values"]["grafana"]
    assert grafana["enabled"] is False and grafana["sidecar"]["dashboards"]["enabled"] is True, "merged, not replaced"


def test_merged_values_merge_maps_and_replace_lists():
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert addons.merged_values(defaults, {"a": {"c": [3]}, "e": {"f": 1}}) == {
        "a": {"b": 1, "c": [3]},
        "d": 1,
        "e": {"f": 1},
    }
    assert defaults == {"a": {"b": 1, "c": [1, 2]}, "d": 1}, "the chart's defaults stay as they are"


def test_add_on_values_name_an_installed_add_on(project):
    from infra.spec.errors import ConfigError

    def values(document, extra):
        document["config"]["model-serving:addons"]["values"] = extra

    edit_yaml(project / "stacks" / "Pulumi.kind.yaml", lambda d: values(d, {"flagger": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"addons.values.flagger: this add-on is not installed by the stack"):
        load_stack_settings(project, "kind")
    edit_yaml(project / "stacks" / "Pulumi.kind.yaml", lambda d: values(d, {"cert-manager": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"addons.values.cert-manager: unknown add-on; values apply to envoy-gateway"):
        load_stack_settings(project, "kind")
