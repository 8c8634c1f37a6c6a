"""Node capacity (pure): what the kubelet of an EKS node lets pods request, and the stack's node pools."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kubernetes.utils.quantity import parse_quantity

from infra.platform.cluster import GPU_RESOURCE, GPU_TAINT, NODE_POOL_LABEL
from infra.spec.instances import INSTANCE_TYPES, InstanceType
from infra.spec.settings import NodePool, StackSettings

MIB = 1024 * 1024
# The NVIDIA device plugin chart's default required node affinity accepts a node labelled
# `nvidia.com/gpu.present=true` (NVIDIA/k8s-device-plugin@v0.17.4
# deployments/helm/nvidia-device-plugin/values.yaml:L63-L84); the GPU node group carries it.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"

# The EKS AMI's kubelet reservations, awslabs/amazon-eks-ami@81fec2e (nodeadm, AL2023):
# nodeadm/internal/kubelet/config.go:L110-L114 default evictionHard `memory.available: 100Mi`;
EVICTION_HARD_MEMORY_MIB = 100
# config.go:L416-L417 CPU ranges {0, 1000, 2000, 4000, total} millicores reserved at
# {600, 100, 50, 25}/10000: 6% of the first core, 1% of the second, 0.5% of cores 3-4,
# 0.25% of every core above 4 (L410-L427 getCPUMillicoresToReserve, L431-L440
# getResourceToReserveInRange, integer division). The AL2 bootstrap.sh had the same formula
# (amazon-eks-ami@v20260304 templates/al2/runtime/bootstrap.sh:L274-L293).
CPU_RANGES_MILLICORES = (0, 1000, 2000, 4000)
CPU_RESERVED_PER_10000 = (600, 100, 50, 25)


def kube_reserved_cpu_millicores(vcpus: int) -> int:
    total = vcpus * 1000
    ends = (*CPU_RANGES_MILLICORES[1:], total)
    reserved = 0
    for start, end, share in zip(CPU_RANGES_MILLICORES, ends, CPU_RESERVED_PER_10000, strict=True):
        if total > start:
            reserved += (min(total, end) - start) * share // 10000
    return reserved


def kube_reserved_memory_mib(max_pods: int) -> int:
    # config.go:L442-L444 getMemoryMebibytesToReserve: 11*maxPods + 255 (Mi); L277-L287
    # takes maxPods from the embedded instance-info.jsonl.
    return 11 * max_pods + 255


class Allocatable(NamedTuple):
    """What pods on one node may request in total."""

    cpu_millicores: int
    memory_bytes: int
    gpus: int


def allocatable(instance_type: str) -> Allocatable:
    """Allocatable of an EKS AMI node: capacity - kube-reserved - evictionHard (no system-reserved
    is set by nodeadm). Memory capacity is the instance's nominal size; the kernel keeps a little
    of it, so a real node reports slightly less — leave headroom rather than fill to the byte."""
    known = _instance(instance_type)
    cpu = known.vcpus * 1000 - kube_reserved_cpu_millicores(known.vcpus)
    memory_mib = known.memory_mib - kube_reserved_memory_mib(known.max_pods) - EVICTION_HARD_MEMORY_MIB
    return Allocatable(cpu, memory_mib * MIB, known.gpus)


def _instance(instance_type: str) -> InstanceType:
    try:
        return INSTANCE_TYPES[instance_type]
    except KeyError:
        raise KeyError(f"unknown instance type {instance_type!r}; supported: {', '.join(INSTANCE_TYPES)}") from None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str  # NoSchedule, PreferNoSchedule, NoExecute (the Kubernetes spelling)


@dataclass(frozen=True)
class NodePoolCapacity:
    """One node pool as the scheduler sees it: per-node allocatable, how many nodes, and whether
    a node autoscaler may add nodes up to `max`."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    allocatable: Allocatable  # per node
    desired: int
    max: int
    autoscaled: bool
    max_pods: int | None = None  # per node, when known (the EKS AMI's max pods)


def node_pools(settings: StackSettings) -> list[NodePoolCapacity]:
    """The stack's node pools: for EKS from the instance table and the AMI's reservations, for an
    existing cluster from `cluster.nodePools`; empty when the stack does not say."""
    eks = settings.cluster.eks
    if eks is None:
        return [_existing_pool(pool) for pool in settings.cluster.node_pools]
    autoscaled = settings.addons.cluster_autoscaler
    pools = [_eks_pool("cpu", eks.cpu_nodes, autoscaled, gpu=False)]
    if eks.gpu_nodes is not None:
        pools.append(_eks_pool("gpu", eks.gpu_nodes, autoscaled, gpu=True))
    return pools


def eks_pool_labels(pool_name: str, gpu: bool) -> dict[str, str]:
    """Kubernetes labels of an EKS managed node group's nodes (set through the EKS API)."""
    return {NODE_POOL_LABEL: pool_name} | ({GPU_PRESENT_LABEL: "true"} if gpu else {})


def _eks_pool(name: str, pool: NodePool, autoscaled: bool, gpu: bool) -> NodePoolCapacity:
    return NodePoolCapacity(
        name=name,
        labels=eks_pool_labels(name, gpu),
        taints=(Taint(GPU_TAINT["key"], GPU_TAINT["value"], GPU_TAINT["effect"]),) if gpu else (),
        allocatable=allocatable(pool.instance_type),
        desired=pool.desired_size,
        max=pool.max_size if autoscaled else pool.desired_size,
        autoscaled=autoscaled,
        max_pods=INSTANCE_TYPES[pool.instance_type].max_pods,
    )


def _existing_pool(pool) -> NodePoolCapacity:
    autoscaled = pool.max_count is not None and pool.max_count > pool.count
    return NodePoolCapacity(
        name=pool.name,
        labels=dict(pool.labels),
        taints=tuple(Taint(t.key, t.value, t.effect.value) for t in pool.taints),
        allocatable=Allocatable(int(parse_quantity(pool.cpu) * 1000), int(parse_quantity(pool.memory)), pool.gpus),
        desired=pool.count,
        max=pool.max_count if autoscaled else pool.count,
        autoscaled=autoscaled,
    )


@dataclass(frozen=True)
class PodRequest:
    """What one pod asks of a node: requests, where it may go, what it tolerates."""

    name: str
    cpu_millicores: int
    memory_bytes: int
    gpus: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()


def pod_request(name: str, pod_spec: Mapping) -> PodRequest:
    """A pod's effective request (Kubernetes: the larger of the sum over containers and the
    largest init container, per resource), with its nodeSelector and tolerations."""

    def amounts(container: Mapping) -> tuple[int, int, int]:
        requests = (container.get("resources") or {}).get("requests") or {}
        return (
            math.ceil(parse_quantity(requests.get("cpu", 0)) * 1000),
            int(parse_quantity(requests.get("memory", 0))),
            int(parse_quantity(requests.get(GPU_RESOURCE, 0))),
        )

    regular = [amounts(c) for c in pod_spec.get("containers") or []]
    init = [amounts(c) for c in pod_spec.get("initContainers") or []]
    effective = [max(sum(r[i] for r in regular), max((r[i] for r in init), default=0)) for i in range(3)]
    return PodRequest(
        name,
        *effective,
        node_selector=dict(pod_spec.get("nodeSelector") or {}),
        tolerations=tuple(pod_spec.get("tolerations") or ()),
    )


def schedulable_on(pod: PodRequest, pool: NodePoolCapacity) -> bool:
    """The pod's nodeSelector matches the pool's labels and it tolerates every NoSchedule/NoExecute taint."""
    if any(pool.labels.get(k) != v for k, v in pod.node_selector.items()):
        return False
    return all(_tolerated(taint, pod.tolerations) for taint in pool.taints if taint.effect != "PreferNoSchedule")


def _tolerated(taint: Taint, tolerations: Iterable[Mapping[str, str]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.effect):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint.key):
            return True
        if toleration.get("key") == taint.key and toleration.get("value") == taint.value:
            return True
    return False


def fits(pods: Sequence[PodRequest], pools: Sequence[NodePoolCapacity], at_max: bool = False) -> list[PodRequest]:
    """First-fit decreasing of `pods` onto each pool's desired nodes (`at_max`: its most nodes); returns the pods
    that found no node (empty: everything fits). Larger pods go first, by CPU then memory."""
    free: list[tuple[NodePoolCapacity, list[list[int]]]] = [
        (
            pool,
            [
                [
                    pool.allocatable.cpu_millicores,
                    pool.allocatable.memory_bytes,
                    pool.allocatable.gpus,
                    pool.max_pods if pool.max_pods is not None else 1 << 30,
                ]
                for _ in range(pool.max if at_max else pool.desired)
            ],
        )
        for pool in pools
    ]
    unplaced = []
    for pod in sorted(pods, key=lambda p: (p.gpus, p.cpu_millicores, p.memory_bytes), reverse=True):
        need = (pod.cpu_millicores, pod.memory_bytes, pod.gpus, 1)
        for pool, node_free in free:
            if not schedulable_on(pod, pool):
                continue
            node = next((n for n in node_free if all(n[i] >= need[i] for i in range(4))), None)
            if node is not None:
                for i in range(4):
                    node[i] -= need[i]
                break
        else:
            unplaced.append(pod)
    return unplaced
