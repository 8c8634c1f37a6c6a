"""The AWS side of a stack (pure builders): the model bucket's hardening, IAM policy documents
for per-model readers (IRSA) and the CI publisher, and the cluster add-ons' pinned charts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infra.manifest import ModelManifest
from infra.settings import ObjectStoreSettings

GPU_RESOURCE = "nvidia.com/gpu"
NODE_POOL_LABEL = "model-serving.dev/node-pool"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
EKS_NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)
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
    prefix = model_prefix(store, manifest)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadModelVersions",
                "Effect": "Allow",
                "Action": list(READ_ACTIONS),
                "Resource": [f"{bucket_arn(store)}/{prefix}*"],
            },
            {
                "Sid": "ListModelVersions",
                "Effect": "Allow",
                "Action": list(LIST_ACTIONS),
                "Resource": [bucket_arn(store)],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
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


def node_trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


EXACT_CHART_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+$")


@dataclass(frozen=True)
class Chart:
    """A Helm release, pinned: chart, exact version, repository, namespace."""

    name: str
    chart: str
    version: str
    repository: str | None
    namespace: str
    values: dict[str, Any]


# Versions as published (each seen pinned in public install instructions). Envoy Gateway's
# chart carries the Gateway API CRDs.
ENVOY_GATEWAY = Chart(
    "envoy-gateway", "oci://docker.io/envoyproxy/gateway-helm", "v1.9.2", None, "envoy-gateway-system", {}
)
METRICS_SERVER = Chart(
    "metrics-server",
    "metrics-server",
    "3.12.2",
    "https://kubernetes-sigs.github.io/metrics-server/",
    "kube-system",
    {},
)
KUBE_PROMETHEUS_STACK = Chart(
    "kube-prometheus-stack",
    "kube-prometheus-stack",
    "83.6.0",
    "https://prometheus-community.github.io/helm-charts",
    "monitoring",
    # Grafana's sidecar loads the models' dashboard ConfigMaps from every namespace.
    {"grafana": {"sidecar": {"dashboards": {"enabled": True, "label": "grafana_dashboard", "searchNamespace": "ALL"}}}},
)
FLAGGER = Chart(
    "flagger",
    "flagger",
    "1.45.0",
    "https://flagger.app",
    "flagger-system",
    {"meshProvider": "gatewayapi:v1", "metricsServer": "http://kube-prometheus-stack-prometheus.monitoring:9090"},
)
