"""Node capacity: the EKS AMI's allocatable per instance type, the stack's node pools, and that the
eks stack's default models schedule on the nodes it declares."""

from __future__ import annotations

import math

import pytest

from infra.offline import OfflineRun, run_stack
from infra.platform.cluster import GPU_RESOURCE, NODE_POOL_LABEL
from infra.platform.nodes import (
    ACCELERATOR_LABEL,
    GPU_PRESENT_LABEL,
    MIB,
    Allocatable,
    NodePoolCapacity,
    Taint,
    allocatable,
    kube_reserved_cpu_millicores,
    kube_reserved_memory_mib,
    node_pools,
)
from infra.spec.errors import ConfigError
from infra.spec.instances import INSTANCE_TYPES
from infra.spec.settings import load_stack_settings
from policy.engines import Pod, PodRequest, place, pod_request
from scripts.modelctl.guardrails import policy_node_pool
from tests.conftest import ROOT, STACKS, edit_yaml

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
GIB = 1024 * MIB


def test_an_m7i_large_has_about_1_93_cpu_allocatable():
    # 2000m - (6% of the first core + 1% of the second); 8 GiB - (11*29+255) MiB kube-reserved
    # - 100 MiB evictionHard (amazon-eks-ami nodeadm/internal/kubelet/config.go).
    assert allocatable("m7i.large") == (1930, 8 * GIB - (11 * 29 + 255) * MIB - 100 * MIB, 0)


@pytest.mark.parametrize(
    ("vcpus", "reserved"),
    [(1, 60), (2, 70), (4, 80), (8, 90), (16, 110), (96, 310)],
)
def test_cpu_reservation_follows_the_ami_ranges(vcpus, reserved):
    assert kube_reserved_cpu_millicores(vcpus) == reserved


def test_larger_types_and_gpus():
    assert allocatable("c7i.2xlarge") == Allocatable(7910, 16 * GIB - 893 * MIB - 100 * MIB, 0)
    assert allocatable("m7i.xlarge").cpu_millicores == 3920
    assert allocatable("g5.xlarge").gpus == 1 and allocatable("g6.xlarge").gpus == 1
    assert kube_reserved_memory_mib(58) == 893


def test_the_table_covers_the_types_the_issue_names():
    wanted = {"m7i.large", "m7i.xlarge", "m7i.2xlarge", "c7i.xlarge", "c7i.2xlarge", "r7i.xlarge"}
    wanted |= {"g5.xlarge", "g5.2xlarge", "g6.xlarge"}
    assert wanted <= set(INSTANCE_TYPES)
    for instance in INSTANCE_TYPES.values():
        cpu, memory, gpus = allocatable(instance.name)
        assert 0 < cpu < instance.vcpus * 1000 and 0 < memory < instance.memory_mib * MIB
        assert gpus == (1 if instance.name.startswith("g") else 0)


def test_an_unknown_instance_type_is_named_with_the_supported_ones():
    with pytest.raises(KeyError, match=r"t3\.micro.*m7i\.large"):
        allocatable("t3.micro")


def _set_eks(project, **changes):
    def change(document):
        eks = document["config"]["model-serving:cluster"]["eks"]
        for key, value in changes.items():
            if value is None:
                eks.pop(key, None)
            else:
                eks[key] = value

    edit_yaml(project / "stacks" / "Pulumi.eks.yaml", change)


def test_an_unsupported_instance_type_is_refused_naming_the_field(project):
    _set_eks(project, cpuNodes={"instanceType": "t3.micro", "minSize": 1, "desiredSize": 1, "maxSize": 2})
    with pytest.raises(ConfigError) as caught:
        load_stack_settings(project, "eks")
    (item,) = caught.value.errors
    assert item.file == "stacks/Pulumi.eks.yaml"
    assert item.field == "config.model-serving:cluster.eks.cpuNodes.instanceType"
    assert "t3.micro" in item.message and "m7i.large" in item.message and "g6.xlarge" in item.message


def test_a_gpu_pool_needs_a_gpu_instance_type(project):
    _set_eks(project, gpuNodes={"instanceType": "m7i.xlarge"})
    with pytest.raises(ConfigError) as caught:
        load_stack_settings(project, "eks")
    (item,) = caught.value.errors
    assert item.field == "config.model-serving:cluster.eks.gpuNodes.instanceType"
    assert "no GPU" in item.message and "g5.xlarge" in item.message


def test_a_gpu_pool_defaults_to_zero_nodes(project):
    _set_eks(project, gpuNodes={"instanceType": "g5.xlarge"})
    gpu = load_stack_settings(project, "eks").cluster.eks.gpu_nodes
    assert (gpu.min_size, gpu.desired_size) == (0, 0)


def test_eks_node_pools_come_from_the_instance_table():
    settings = load_stack_settings(ROOT, "eks")
    cpu, gpu = node_pools(settings)
    spec = settings.cluster.eks
    assert cpu == NodePoolCapacity(
        name="cpu",
        labels={NODE_POOL_LABEL: "cpu"},
        taints=(),
        allocatable=allocatable(spec.cpu_nodes.instance_type),
        desired=spec.cpu_nodes.desired_size,
        max=spec.cpu_nodes.max_size,
        autoscaled=True,
        max_pods=INSTANCE_TYPES[spec.cpu_nodes.instance_type].max_pods,
    )
    assert gpu.labels == {
        NODE_POOL_LABEL: "gpu",
        GPU_PRESENT_LABEL: "true",
        ACCELERATOR_LABEL: INSTANCE_TYPES[spec.gpu_nodes.instance_type].accelerator,
    }
    assert gpu.taints == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)
    assert gpu.allocatable.gpus == 1 and gpu.desired == 0 and gpu.max == spec.gpu_nodes.max_size


def test_without_an_autoscaler_a_pool_never_grows(project):
    edit_yaml(
        project / "stacks" / "Pulumi.eks.yaml", lambda d: d["config"]["model-serving:addons"].pop("clusterAutoscaler")
    )
    cpu, _ = node_pools(load_stack_settings(project, "eks"))
    assert cpu.autoscaled is False and cpu.max == cpu.desired


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "eks"])
def test_existing_clusters_have_no_known_pools_unless_the_stack_lists_them(stack):
    settings = load_stack_settings(ROOT, stack)
    pools = node_pools(settings)
    assert [p.name for p in pools] == [p.name for p in settings.cluster.node_pools]
    for pool, listed in zip(pools, settings.cluster.node_pools, strict=True):
        assert pool.desired == listed.count and pool.autoscaled is False


def test_existing_cluster_pools_from_the_stack(project):
    pools = [
        {"name": "general", "cpu": "3920m", "memory": "14Gi", "count": 3, "maxCount": 6},
        {
            "name": "gpu",
            "cpu": "7", "memory": "28Gi", "gpus": 1, "count": 1,
            "labels": {NODE_POOL_LABEL: "gpu"},
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
    ]  # fmt: skip

    def add_pools(document):
        document["config"].setdefault("model-serving:cluster", {}).update({"nodePools": pools})
        # A priced stack with GPU nodes prices GPU hours too (infra/spec/prices.py).
        document["config"]["model-serving:prices"]["gpuHour"] = 1.0

    edit_yaml(project / "stacks" / "Pulumi.prod.yaml", add_pools)
    general, gpu = node_pools(load_stack_settings(project, "prod"))
    assert general.allocatable == Allocatable(3920, 14 * GIB, 0)
    assert (general.desired, general.max, general.autoscaled) == (3, 6, True)
    assert gpu.allocatable == Allocatable(7000, 28 * GIB, 1) and (gpu.max, gpu.autoscaled) == (1, False)
    assert gpu.labels == {NODE_POOL_LABEL: "gpu"} and gpu.taints == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)


def test_node_pools_are_for_existing_clusters_only(project):
    _set_eks(project)
    edit_yaml(
        project / "stacks" / "Pulumi.eks.yaml",
        lambda d: d["config"]["model-serving:cluster"].update(
            {"nodePools": [{"name": "x", "cpu": "1", "memory": "1Gi", "count": 1}]}
        ),
    )
    with pytest.raises(ConfigError, match=r"config.model-serving:cluster.nodePools: only for an existing cluster"):
        load_stack_settings(project, "eks")


def test_pod_request_is_the_larger_of_containers_and_init_containers():
    spec = {
        "initContainers": [{"resources": {"requests": {"cpu": "100m", "memory": "3Gi"}}}],
        "containers": [
            {"resources": {"requests": {"cpu": "1", "memory": "1Gi", GPU_RESOURCE: "1"}}},
            {"resources": {"requests": {"cpu": "250m"}}},
        ],
        "nodeSelector": {NODE_POOL_LABEL: "gpu"},
    }
    pod = pod_request(spec)
    assert (pod.cpu_millis, pod.memory_bytes, pod.gpus) == (1250, 3 * GIB, 1)


def pods_of(name: str, request: PodRequest, count: int = 1, spec: dict | None = None) -> list[Pod]:
    return [Pod(request, spec or {}, name)] * count


def test_placement_respects_selectors_taints_and_sizes():
    cpu_pool = NodePoolCapacity("cpu", {NODE_POOL_LABEL: "cpu"}, (), Allocatable(1930, 7 * GIB, 0), 2, 4, True)
    gpu_pool = NodePoolCapacity(
        "gpu",
        {NODE_POOL_LABEL: "gpu"},
        (Taint("nvidia.com/gpu", "present", "NoSchedule"),),
        Allocatable(3920, 14 * GIB, 1),
        0,
        2,
        True,
    )
    desired = [policy_node_pool(cpu_pool, nodes=2), policy_node_pool(gpu_pool, nodes=0)]
    at_max = [policy_node_pool(cpu_pool), policy_node_pool(gpu_pool)]
    big = pods_of("big", PodRequest(2000, GIB, 0))
    assert place(big, desired) == big, "2 CPU is more than an m7i.large offers, and the GPU pool is tainted"
    small = pods_of("small", PodRequest(900, GIB, 0), 4)
    assert place(small, desired[:1]) == [] and len(place([*small, small[0]], desired[:1])) == 1
    toleration = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    gpu_spec = {"nodeSelector": {NODE_POOL_LABEL: "gpu"}, "tolerations": [toleration]}
    gpu_pod = pods_of("g", PodRequest(1000, GIB, 1), spec=gpu_spec)
    assert place(gpu_pod, desired) == gpu_pod, "no GPU node at the desired size 0"
    assert place(gpu_pod, at_max) == [], "the autoscaler scales the GPU pool from zero"


def model_pods(run: OfflineRun, surge: bool, at: str = "minReplicas") -> list[Pod]:
    """Every model's pods at their minimum (or `at="maxReplicas"`) replicas, plus, with
    `surge`, the extra pods of a rolling update (the Deployment's maxSurge, rounded up)."""
    bound = {r.object["spec"]["scaleTargetRef"]["name"]: r.object["spec"][at] for r in run.resources if r.type == HPA}
    pods = []
    for deployment in (r for r in run.resources if r.type == DEPLOYMENT):
        obj = deployment.object
        replicas = bound.get(obj["metadata"]["name"], obj["spec"].get("replicas", 1))
        max_surge = obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        extra = math.ceil(replicas * int(max_surge.rstrip("%")) / 100) if str(max_surge).endswith("%") else max_surge
        spec = obj["spec"]["template"]["spec"]
        pods += pods_of(deployment.name, pod_request(spec), replicas + (extra if surge else 0), spec)
    return pods


def desired_pools(settings) -> list:
    return [policy_node_pool(pool, nodes=pool.desired) for pool in node_pools(settings)]


def test_the_eks_stacks_default_models_schedule_on_its_desired_nodes(runs):
    """Fails on the old sizing: 3 x m7i.large (1930m each) cannot hold a 2-CPU taxi-fare pod."""
    pools = desired_pools(load_stack_settings(ROOT, "eks"))
    pods = model_pods(runs["eks"], surge=True)
    assert {p.request.cpu_millis for p in pods} >= {2000}, "prod's taxi-fare requests 2 CPU"
    assert place(pods, pools) == []
    # The add-ons (Envoy Gateway, Prometheus, Grafana, Flagger, the autoscaler, DaemonSets) need
    # room too: the models leave at least one node's worth of CPU free.
    cpu = pools[0]
    used = sum(p.request.cpu_millis for p in pods)
    assert cpu.nodes * cpu.cpu_millis - used >= cpu.cpu_millis


def test_the_eks_stacks_models_at_their_maxima_fit_the_autoscalers_bounds(runs):
    pods = model_pods(runs["eks"], surge=False, at="maxReplicas")
    pools = [policy_node_pool(pool) for pool in node_pools(load_stack_settings(ROOT, "eks"))]
    assert place(pods, pools) == []


def test_the_old_eks_sizing_would_not_schedule(project):
    _set_eks(project, cpuNodes={"instanceType": "m7i.large", "minSize": 2, "desiredSize": 3, "maxSize": 6})
    # Every node group's instance type is priced (infra/spec/prices.py); the figure is a test's.
    edit_yaml(
        project / "stacks" / "Pulumi.eks.yaml",
        lambda d: d["config"]["model-serving:prices"]["instances"].update({"m7i.large": 0.1}),
    )
    pools = desired_pools(load_stack_settings(project, "eks"))
    unplaced = place(model_pods(run_stack(project, "eks"), surge=False), pools)
    assert unplaced and all(p.owner.startswith("taxi-fare") for p in unplaced)
