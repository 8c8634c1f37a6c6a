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
    # The Cluster Autoscaler's GPU type of the instance's GPU (`k8s.amazonaws.com/accelerator`):
    # see ACCELERATORS below.
    accelerator: str | None = None


# The value of `k8s.amazonaws.com/accelerator` by instance family. The Cluster Autoscaler treats a
# node carrying that label as a GPU node before the device plugin has registered `nvidia.com/gpu`
# (kubernetes/autoscaler@cluster-autoscaler-1.33.6 cluster-autoscaler/utils/gpu/gpu.go:L101-L105
# NodeHasGpu; the key is GPULabel, cloudprovider/aws/aws_cloud_provider.go:L37-L38), and reads
# the value as the GPU type (gpu.go:L116-L121). Without it it "may unnecessarily scale out multiple
# times" (cloudprovider/aws/README.md:L272-L286, "Special note on GPU instances"). The value is
# free-form; the README's example is `nvidia-tesla-k80` for P2, and we name the GPU the EC2
# instance type specifications give for the family (aws.amazon.com/ec2/instance-types: G5 "NVIDIA
# A10G Tensor Core GPUs", G6 "NVIDIA L4 Tensor Core GPUs") in that style.
ACCELERATORS: dict[str, str] = {"g5": "nvidia-tesla-a10g", "g6": "nvidia-l4"}

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
        InstanceType("g5.xlarge", vcpus=4, memory_mib=16 * 1024, max_pods=58, gpus=1, accelerator=ACCELERATORS["g5"]),
        InstanceType("g5.2xlarge", vcpus=8, memory_mib=32 * 1024, max_pods=58, gpus=1, accelerator=ACCELERATORS["g5"]),
        InstanceType("g6.xlarge", vcpus=4, memory_mib=16 * 1024, max_pods=58, gpus=1, accelerator=ACCELERATORS["g6"]),
    )
}
