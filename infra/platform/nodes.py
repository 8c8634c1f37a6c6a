"""Node capacity (pure): what the kubelet of an EKS node lets pods request, and the stack's node pools.

Where pods land is decided by the `pods-schedule` policy rule (policy/engines.py), from these pools."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from kubernetes.utils.quantity import parse_quantity

from infra.platform.cluster import GPU_TAINT, NODE_POOL_LABEL
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


# The Cluster Autoscaler's GPU label (kubernetes/autoscaler@cluster-autoscaler-1.33.6
# cluster-autoscaler/cloudprovider/aws/aws_cloud_provider.go:L37-L38); values: infra/spec/instances.py.
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"


def eks_pool_labels(pool_name: str, gpu: bool, instance_type: str | None = None) -> dict[str, str]:
    """Kubernetes labels of an EKS managed node group's nodes (set through the EKS API, so the
    kubelet registers the node with them, as the autoscaler's AWS README asks of GPU nodes)."""
    labels = {NODE_POOL_LABEL: pool_name}
    if gpu:
        labels[GPU_PRESENT_LABEL] = "true"
        accelerator = _instance(instance_type).accelerator if instance_type else None
        if accelerator is None:
            raise KeyError(f"no accelerator name for GPU instance type {instance_type!r} (infra/spec/instances.py)")
        labels[ACCELERATOR_LABEL] = accelerator
    return labels


def _eks_pool(name: str, pool: NodePool, autoscaled: bool, gpu: bool) -> NodePoolCapacity:
    return NodePoolCapacity(
        name=name,
        labels=eks_pool_labels(name, gpu, pool.instance_type),
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
