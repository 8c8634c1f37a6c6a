"""The EC2 instance types an EKS stack may use for its node groups, with what the scheduler needs of each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type: its size, and how many pods the EKS AMI lets its kubelet run."""

    name: str
    vcpus: int
    memory_mib: int
    # ENIs * (IPv4 per ENI - 1) + 2, as nodeadm computes it (awslabs/amazon-eks-ami@81fec2e
    # nodeadm/internal/kubelet/eni_max_pods.go:L75-L76, `calculateStandardMaxPods`) from its
    # embedded nodeadm/internal/kubelet/instance-info.jsonl (line of each type below).
    max_pods: int
    gpus: int = 0


# vCPU, memory and GPUs are the EC2 instance type specifications (aws.amazon.com/ec2/instance-types);
# the ENI figures are from awslabs/amazon-eks-ami@81fec2e nodeadm/internal/kubelet/instance-info.jsonl:
#   m7i.large L717 {3 ENIs, 10 IPv4} -> 29;  every other type here {4 ENIs, 15 IPv4} -> 58:
#   m7i.xlarge L720, m7i.2xlarge L713, c7i.xlarge L186, c7i.2xlarge L179, r7i.xlarge L1102,
#   g5.xlarge L373, g5.2xlarge L369, g6.xlarge L387.
# The same max-pods values are in the AL2 AMI's eni-max-pods.txt (amazon-eks-ami@v20260304
# templates/shared/runtime/eni-max-pods.txt: m7i.large 29, m7i.xlarge 58, c7i.xlarge 58, g5.xlarge 58).
INSTANCE_TYPES: dict[str, InstanceType] = {
    t.name: t
    for t in (
        InstanceType("m7i.large", vcpus=2, memory_mib=8 * 1024, max_pods=29),
        InstanceType("m7i.xlarge", vcpus=4, memory_mib=16 * 1024, max_pods=58),
        InstanceType("m7i.2xlarge", vcpus=8, memory_mib=32 * 1024, max_pods=58),
        InstanceType("c7i.xlarge", vcpus=4, memory_mib=8 * 1024, max_pods=58),
        InstanceType("c7i.2xlarge", vcpus=8, memory_mib=16 * 1024, max_pods=58),
        InstanceType("r7i.xlarge", vcpus=4, memory_mib=32 * 1024, max_pods=58),
        InstanceType("g5.xlarge", vcpus=4, memory_mib=16 * 1024, max_pods=58, gpus=1),
        InstanceType("g5.2xlarge", vcpus=8, memory_mib=32 * 1024, max_pods=58, gpus=1),
        InstanceType("g6.xlarge", vcpus=4, memory_mib=16 * 1024, max_pods=58, gpus=1),
    )
}
