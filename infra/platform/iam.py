"""IAM policy documents (pure builders): the model bucket's TLS-only policy, per-model readers
(IRSA) and the CI publisher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.spec.manifest import ModelManifest
from infra.spec.settings import ObjectStoreSettings

READ_ACTIONS = ("s3:GetObject",)
LIST_ACTIONS = ("s3:ListBucket",)
# A publisher writes new versions (multipart included) and reads what it checks; it never deletes.
PUBLISH_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


def bucket_arn(store: ObjectStoreSettings) -> str:
    return f"arn:aws:s3:::{store.bucket}"


def model_prefix(store: ObjectStoreSettings, manifest: ModelManifest) -> str:
    """Key prefix of every version of one model, with the trailing slash that keeps
    `iris/` from matching `iris-xl/`."""
    return f"{store.prefix.strip('/')}/{manifest.artifact.path}/"


def reader_policy(store: ObjectStoreSettings, manifest: ModelManifest) -> dict[str, Any]:
    """What the model's pods may do: read its own versions, list only under its own prefix."""
    return readers_policy(store, [manifest])


def readers_policy(store: ObjectStoreSettings, manifests: Sequence[ModelManifest]) -> dict[str, Any]:
    """What a pool's pods may do: read and list under each member's own prefix, nothing else."""
    prefixes = [model_prefix(store, manifest) for manifest in manifests]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadModelVersions",
                "Effect": "Allow",
                "Action": list(READ_ACTIONS),
                "Resource": [f"{bucket_arn(store)}/{prefix}*" for prefix in prefixes],
            },
            {
                "Sid": "ListModelVersions",
                "Effect": "Allow",
                "Action": list(LIST_ACTIONS),
                "Resource": [bucket_arn(store)],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}},
            },
        ],
    }


def publisher_policy(store: ObjectStoreSettings) -> dict[str, Any]:
    """CI publishes new versions under the prefix; no delete anywhere, and never the marker of
    a version twice (the conditional writes of `modelctl publish` enforce that)."""
    prefix = store.prefix.strip("/")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteNewVersions",
                "Effect": "Allow",
                "Action": list(PUBLISH_ACTIONS),
                "Resource": [f"{bucket_arn(store)}/{prefix}/*"],
            },
            {
                "Sid": "ListVersions",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket_arn(store)],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            },
            {
                "Sid": "NeverDelete",
                "Effect": "Deny",
                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutLifecycleConfiguration"],
                "Resource": [bucket_arn(store), f"{bucket_arn(store)}/*"],
            },
        ],
    }


def tls_only_policy(store: ObjectStoreSettings) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn(store), f"{bucket_arn(store)}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def irsa_trust_policy(oidc_provider_arn: str, oidc_issuer: str, namespace: str, service_account: str) -> dict[str, Any]:
    """Only the model's ServiceAccount may assume its role (EKS IAM roles for service accounts)."""
    issuer = oidc_issuer.removeprefix("https://")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": oidc_provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                        f"{issuer}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


def cluster_autoscaler_policy(cluster_name: str) -> dict[str, Any]:
    """The "Full Cluster Autoscaler Features Policy (Recommended)" of kubernetes/autoscaler@
    cluster-autoscaler-chart-9.59.0 cluster-autoscaler/cloudprovider/aws/README.md:L34-L69, with
    its second block restricted as that README advises (L30-L33, tag-based conditionals): only
    groups tagged for this cluster's autoscaler, which EKS puts on managed node groups."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DiscoverNodeGroups",
                "Effect": "Allow",
                "Action": [
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeLaunchConfigurations",
                    "autoscaling:DescribeScalingActivities",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplateVersions",
                    "ec2:GetInstanceTypesFromInstanceRequirements",
                    # Labels and taints of a group at 0 nodes (README.md:L110): the GPU pool scales from zero.
                    "eks:DescribeNodegroup",
                ],
                "Resource": ["*"],
            },
            {
                "Sid": "ScaleThisClustersNodeGroups",
                "Effect": "Allow",
                "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
                "Resource": ["*"],
                "Condition": {"Null": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "false"}},
            },
        ],
    }
