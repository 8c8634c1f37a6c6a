"""The Platform component: what every model of a stack shares, and the Kubernetes provider."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.platform import addons, cluster, iam, network
from infra.spec.settings import ClusterMode, RouteKind, StackSettings

PLATFORM_TYPE = "model-serving:platform:Platform"


class Platform(pulumi.ComponentResource):
    """What every model of a stack shares: the cluster (existing, or EKS), the namespace and its
    default-deny policy, the Gateway, the add-ons, and the object store when the stack manages it."""

    namespace_name: pulumi.Output[str]
    k8s_provider: k8s.Provider
    addons: dict[str, k8s.helm.v3.Release]
    oidc: tuple[pulumi.Input[str], pulumi.Input[str]] | None  # (provider ARN, issuer) for IRSA
    aws_provider: Any

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__(PLATFORM_TYPE, name, None, opts)
        self.aws_provider = None
        self.oidc = None
        if settings.cluster.oidc_provider_arn and settings.cluster.oidc_issuer:
            self.oidc = (settings.cluster.oidc_provider_arn, settings.cluster.oidc_issuer)
        needs_aws = settings.cluster.mode is ClusterMode.eks or settings.object_store.managed
        if needs_aws:
            import pulumi_aws as aws

            # The stacks disable default providers: every AWS resource names this one.
            self.aws_provider = aws.Provider(
                f"{name}-aws", region=settings.object_store.region, opts=pulumi.ResourceOptions(parent=self)
            )
        if settings.cluster.mode is ClusterMode.eks:
            kubeconfig = self._eks(name, settings)
            self.k8s_provider = kubernetes_provider(f"{name}-kubernetes", settings, self, kubeconfig=kubeconfig)
        else:
            self.k8s_provider = kubernetes_provider(f"{name}-kubernetes", settings, self)
        child = pulumi.ResourceOptions(parent=self, provider=self.k8s_provider)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", **network.namespace(settings), opts=child)
        self.namespace = namespace
        self.namespace_name = namespace.metadata.name
        k8s.networking.v1.NetworkPolicy(f"{name}-default-deny", **network.default_deny(self.namespace_name), opts=child)
        k8s.networking.v1.NetworkPolicy(f"{name}-allow-dns", **network.allow_dns(self.namespace_name), opts=child)
        self.addons = self._addons(name, settings)
        gateway = settings.routing.gateway
        if settings.routing.kind is RouteKind.gateway and gateway is not None and gateway.create:
            self.gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                **network.gateway(settings, self.namespace_name),
                # The Gateway API CRDs come with Envoy Gateway when the stack installs it.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    provider=self.k8s_provider,
                    depends_on=[r for n, r in self.addons.items() if n == addons.ENVOY_GATEWAY.name],
                ),
            )
        if settings.object_store.managed:
            self._object_store(name, settings)
        self.register_outputs({"namespace": self.namespace_name})

    def _eks(self, name: str, settings: StackSettings) -> pulumi.Output[str]:
        """An EKS cluster with a CPU node group and an optional tainted GPU node group; returns
        its kubeconfig, which feeds the Kubernetes provider, so one `pulumi up` builds both."""
        import pulumi_aws as aws
        import pulumi_eks as eks

        spec = settings.cluster.eks
        assert spec is not None
        aws_opts = pulumi.ResourceOptions(parent=self, provider=self.aws_provider)
        node_role = aws.iam.Role(
            f"{name}-node-role", assume_role_policy=json.dumps(cluster.node_trust_policy()), opts=aws_opts
        )
        for index, policy_arn in enumerate(cluster.EKS_NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-role-{index}", role=node_role.name, policy_arn=policy_arn, opts=aws_opts
            )
        eks_cluster = eks.Cluster(
            f"{name}-eks",
            version=spec.kubernetes_version,
            skip_default_node_group=True,
            create_oidc_provider=True,
            instance_roles=[node_role],
            opts=pulumi.ResourceOptions(parent=self, providers={"aws": self.aws_provider}),
        )
        pools = [("cpu", spec.cpu_nodes, False)] + ([("gpu", spec.gpu_nodes, True)] if spec.gpu_nodes else [])
        for pool_name, pool, gpu in pools:
            eks.ManagedNodeGroup(
                f"{name}-{pool_name}-nodes",
                cluster=eks_cluster,
                node_role=node_role,
                instance_types=[pool.instance_type],
                scaling_config={
                    "min_size": pool.min_size,
                    "desired_size": pool.desired_size,
                    "max_size": pool.max_size,
                },
                labels={cluster.NODE_POOL_LABEL: pool_name},
                gpu=gpu or None,
                taints=[{"key": cluster.GPU_TAINT["key"], "value": cluster.GPU_TAINT["value"], "effect": "NO_SCHEDULE"}]
                if gpu
                else None,
                opts=pulumi.ResourceOptions(parent=self, providers={"aws": self.aws_provider}),
            )
        self.oidc = (eks_cluster.oidc_provider_arn, eks_cluster.oidc_issuer)
        return eks_cluster.kubeconfig_json

    def _addons(self, name: str, settings: StackSettings) -> dict[str, k8s.helm.v3.Release]:
        wanted = settings.addons
        charts = [
            (wanted.envoy_gateway, addons.ENVOY_GATEWAY),
            (wanted.metrics_server, addons.METRICS_SERVER),
            (wanted.kube_prometheus_stack, addons.KUBE_PROMETHEUS_STACK),
            (wanted.flagger, addons.FLAGGER),
        ]
        releases = {}
        for enabled, chart in charts:
            if not enabled:
                continue
            repository = k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository) if chart.repository else None
            releases[chart.name] = k8s.helm.v3.Release(
                f"{name}-{chart.name}",
                name=chart.name,
                chart=chart.chart,
                version=chart.version,
                repository_opts=repository,
                namespace=chart.namespace,
                create_namespace=True,
                values=chart.values,
                # Pulumi waits for the release's workloads before the models that need them.
                opts=pulumi.ResourceOptions(parent=self, provider=self.k8s_provider),
            )
        return releases

    def _object_store(self, name: str, settings: StackSettings) -> None:
        import pulumi_aws as aws

        store = settings.object_store
        opts = pulumi.ResourceOptions(parent=self, provider=self.aws_provider)
        bucket = aws.s3.Bucket(f"{name}-bucket", bucket=store.bucket, opts=opts)
        aws.s3.BucketVersioning(
            f"{name}-bucket-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=opts,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-bucket-encryption",
            bucket=bucket.id,
            rules=[
                {"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"}, "bucket_key_enabled": True}
            ],
            opts=opts,
        )
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-bucket-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=opts,
        )
        aws.s3.BucketPolicy(
            f"{name}-bucket-tls-only",
            bucket=bucket.id,
            policy=json.dumps(iam.tls_only_policy(store)),
            opts=pulumi.ResourceOptions(parent=self, provider=self.aws_provider, depends_on=[block]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-bucket-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": store.noncurrent_version_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                }
            ],
            opts=opts,
        )
        aws.iam.Policy(
            f"{name}-publisher",
            description=f"CI publishes model versions to s3://{store.bucket}/{store.prefix}/ (no deletes)",
            policy=json.dumps(iam.publisher_policy(store)),
            opts=opts,
        )


def kubernetes_provider(
    name: str, settings: StackSettings, parent: pulumi.Resource, kubeconfig: pulumi.Input[str] | None = None
) -> k8s.Provider:
    target = settings.kubernetes
    return k8s.Provider(
        name,
        context=target.context if target else None,
        kubeconfig=kubeconfig if kubeconfig is not None else (target.kubeconfig if target else None),
        # renderYamlToDirectory writes manifests instead of talking to a cluster (provider docs:
        # "resources will not be created on a Kubernetes cluster"); the local stack uses it.
        render_yaml_to_directory=target.render_dir if target else None,
        # Server-side apply is the provider's default since v4; keep it explicit.
        enable_server_side_apply=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )
