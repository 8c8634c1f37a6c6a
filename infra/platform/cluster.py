"""The cluster's node pools (pure builders and constants): EKS node role, GPU pool label and taint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.spec.settings import StackSettings

GPU_RESOURCE = "nvidia.com/gpu"
NODE_POOL_LABEL = "model-serving.dev/node-pool"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
EKS_NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)


def node_trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


def eks_cluster_name(settings: StackSettings) -> str:
    """The EKS cluster's physical name: one per stack (EKS names are unique per account and region)."""
    return f"model-serving-{settings.stack}"
