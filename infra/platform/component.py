"""The Platform component: what every model of a stack shares, and the Kubernetes provider."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.platform import addons, cluster, iam, loadtester, network, nodes
from infra.spec.settings import CLUSTER_AUTOSCALER_IMAGE_TAGS, ClusterMode, RouteKind, StackSettings

PLATFORM_TYPE = "model-serving:platform:Platform"


class Platform(pulumi.ComponentResource):
    """What every model of a stack shares: the cluster (existing, or EKS), the namespace and its
    default-deny policy, the Gateway, the add-ons, and the object store when the stack manages it."""

    namespace_name: pulumi.Output[str]
    k8s_provider: k8s.Provider
    addons: dict[str, k8s.helm.v3.Release]
    oidc: tuple[pulumi.Input[str], pulumi.Input[str]] | None  # (provider ARN, issuer) for IRSA
    aws_provider: Any
    eks_provider: Any
    # What the add-on releases wait for: the CPU node group their pods run on (EKS).
    node_groups: list[pulumi.Resource]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__(PLATFORM_TYPE, name, None, opts)
        self.aws_provider = None
        self.eks_provider = None
        self.node_groups = []
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
        if settings.flagger:
            self._load_tester(name, settings, child)
        gateway = settings.routing.gateway
        if settings.routing.kind is RouteKind.gateway and gateway is not None and gateway.create:
            # The Gateway API CRDs come with Envoy Gateway when the stack installs it.
            needs: list[pulumi.Resource] = [r for n, r in self.addons.items() if n == addons.ENVOY_GATEWAY.name]
            if settings.addons.envoy_gateway:
                # Envoy Gateway's chart creates no GatewayClass (network.ENVOY_GATEWAY_CONTROLLER):
                # without this one the Gateway is never accepted.
                self.gateway_class = k8s.apiextensions.CustomResource(
                    f"{name}-gateway-class",
                    **network.gateway_class(settings),
                    opts=pulumi.ResourceOptions(parent=self, provider=self.k8s_provider, depends_on=needs),
                )
                needs = [*needs, self.gateway_class]
            self.gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                **network.gateway(settings, self.namespace_name),
                opts=pulumi.ResourceOptions(parent=self, provider=self.k8s_provider, depends_on=needs),
            )
        if settings.object_store.managed:
            self._object_store(name, settings)
        self.register_outputs({"namespace": self.namespace_name})

    def _load_tester(self, name: str, settings: StackSettings, child: pulumi.ResourceOptions) -> None:
        """Flagger's load tester, which the Canaries' rollout webhooks call (infra/platform/loadtester.py)."""
        protos = k8s.core.v1.ConfigMap(
            f"{name}-loadtester-protos", **loadtester.protoset_config_map(self.namespace_name), opts=child
        )
        k8s.apps.v1.Deployment(
            f"{name}-loadtester",
            **loadtester.deployment(self.namespace_name, protos.metadata.name, settings.production),
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-loadtester-pdb", **loadtester.disruption_budget(self.namespace_name), opts=child
        )
        k8s.core.v1.Service(f"{name}-loadtester-service", **loadtester.service(self.namespace_name), opts=child)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-loadtester-netpol",
            **loadtester.network_policy(self.namespace_name, addons.FLAGGER.namespace),
            opts=child,
        )

    def _eks(self, name: str, settings: StackSettings) -> pulumi.Output[str]:
        """An EKS cluster with a CPU node group and an optional tainted GPU node group; returns
        its kubeconfig, which feeds the Kubernetes provider, so one `pulumi up` builds both."""
        import pulumi_aws as aws
        import pulumi_eks as eks

        spec = settings.cluster.eks
        assert spec is not None
        # With `pulumi:disable-default-providers: ["*"]` the engine refuses a pulumi-eks component
        # without an explicit eks provider ("Default provider for 'eks' disabled. 'eks:index:Cluster'
        # must use an explicit provider.", pulumi/pulumi-eks#917). `providers` is keyed by package and
        # reaches the remote component's children too (pulumi/runtime/resource.py:L268-L274 sends it as
        # RegisterResourceRequest.providers; the eks entry also becomes `provider`, L257-L266).
        self.eks_provider = eks.Provider(f"{name}-eks-provider", opts=pulumi.ResourceOptions(parent=self))
        providers = {"aws": self.aws_provider, "eks": self.eks_provider}
        aws_opts = pulumi.ResourceOptions(parent=self, provider=self.aws_provider)
        node_role = aws.iam.Role(
            f"{name}-node-role", assume_role_policy=json.dumps(cluster.node_trust_policy()), opts=aws_opts
        )
        for index, policy_arn in enumerate(cluster.EKS_NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-role-{index}", role=node_role.name, policy_arn=policy_arn, opts=aws_opts
            )
        cluster_name = cluster.eks_cluster_name(settings)
        eks_cluster = eks.Cluster(
            f"{name}-eks",
            # A known physical name (pulumi_eks cluster.py `name`: "The cluster's physical resource
            # name"), so the Cluster Autoscaler's discovery tag is known at preview.
            name=cluster_name,
            version=spec.kubernetes_version,
            skip_default_node_group=True,
            create_oidc_provider=True,
            instance_roles=[node_role],
            # The VPC CNI enforces NetworkPolicy only when asked (`{"enableNetworkPolicy": "true"}` in the
            # vpc-cni add-on's configuration values: docs.aws.amazon.com/eks/latest/userguide/
            # cni-network-policy-configure.html; awsdocs/amazon-eks-user-guide@4d52b4d latest/ug/networking/
            # eks-networking-add-ons.adoc:L1552-L1571). pulumi-eks merges this flag into those values
            # (pulumi/pulumi-eks@7bf0c1b nodejs/eks/addons/cni-addon.ts:L539-L550 mergeConfigurationValues;
            # pulumi_eks/_inputs.py VpcCniOptionsArgs.enable_network_policy). Without it the models'
            # default-deny and per-model policies would be accepted and ignored.
            vpc_cni_options=eks.VpcCniOptionsArgs(enable_network_policy=True),
            opts=pulumi.ResourceOptions(parent=self, providers=providers),
        )
        pools = [("cpu", spec.cpu_nodes, False)] + ([("gpu", spec.gpu_nodes, True)] if spec.gpu_nodes else [])
        for pool_name, pool, gpu in pools:
            group = eks.ManagedNodeGroup(
                f"{name}-{pool_name}-nodes",
                cluster=eks_cluster,
                node_role=node_role,
                instance_types=[pool.instance_type],
                scaling_config={
                    "min_size": pool.min_size,
                    "desired_size": pool.desired_size,
                    "max_size": pool.max_size,
                },
                # The Cluster Autoscaler owns the node count between min and max: without this
                # every `pulumi up` would set desiredSize back (taking away the GPU node a pending
                # GPU pod was given) and the drift preview would report every scale-up. pulumi-eks
                # then declares its aws.eks.NodeGroup with `ignoreChanges: ["scalingConfig.desiredSize"]`
                # (pulumi/pulumi-eks@7bf0c1b nodejs/eks/nodes/nodegroup.ts:L2085-L2087, L2119;
                # pulumi_eks 4.4.0 managed_node_group.py:L103 "useful when using Cluster Autoscaler").
                ignore_scaling_changes=True if settings.addons.cluster_autoscaler else None,
                labels=nodes.eks_pool_labels(pool_name, gpu, pool.instance_type),
                gpu=gpu or None,
                taints=[{"key": cluster.GPU_TAINT["key"], "value": cluster.GPU_TAINT["value"], "effect": "NO_SCHEDULE"}]
                if gpu
                else None,
                opts=pulumi.ResourceOptions(parent=self, providers=providers),
            )
            if not gpu:
                self.node_groups.append(group)
        self.oidc = (eks_cluster.oidc_provider_arn, eks_cluster.oidc_issuer)
        return eks_cluster.kubeconfig_json

    def _cluster_autoscaler_role(self, name: str, settings: StackSettings) -> pulumi.Output[str]:
        """The Cluster Autoscaler's own IAM role, assumable only by its ServiceAccount (IRSA)."""
        import pulumi_aws as aws

        assert self.oidc is not None
        provider_arn, issuer = self.oidc
        trust = pulumi.Output.all(provider_arn, issuer).apply(
            lambda args: json.dumps(
                iam.irsa_trust_policy(
                    args[0], args[1], addons.CLUSTER_AUTOSCALER.namespace, addons.CLUSTER_AUTOSCALER_SERVICE_ACCOUNT
                )
            )
        )
        opts = pulumi.ResourceOptions(parent=self, provider=self.aws_provider)
        role = aws.iam.Role(f"{name}-cluster-autoscaler", assume_role_policy=trust, opts=opts)
        aws.iam.RolePolicy(
            f"{name}-cluster-autoscaler-policy",
            role=role.name,
            policy=json.dumps(iam.cluster_autoscaler_policy(cluster.eks_cluster_name(settings))),
            opts=opts,
        )
        return role.arn

    def _addons(self, name: str, settings: StackSettings) -> dict[str, k8s.helm.v3.Release]:
        wanted = settings.addons
        eks_spec = settings.cluster.eks
        charts: list[tuple[bool, addons.Chart, dict[str, Any]]] = [
            (wanted.envoy_gateway, addons.ENVOY_GATEWAY, addons.ENVOY_GATEWAY.values),
            (wanted.metrics_server, addons.METRICS_SERVER, addons.METRICS_SERVER.values),
            (wanted.kube_prometheus_stack, addons.KUBE_PROMETHEUS_STACK, addons.KUBE_PROMETHEUS_STACK.values),
            (wanted.flagger, addons.FLAGGER, addons.FLAGGER.values),
            (wanted.keda, addons.KEDA, addons.KEDA.values),
        ]
        if wanted.cluster_autoscaler and eks_spec is not None:
            values = addons.cluster_autoscaler_values(
                cluster.eks_cluster_name(settings),
                settings.object_store.region,
                self._cluster_autoscaler_role(name, settings),
                CLUSTER_AUTOSCALER_IMAGE_TAGS[eks_spec.kubernetes_version],
            )
            charts.append((True, addons.CLUSTER_AUTOSCALER, values))
        # Without the device plugin `nvidia.com/gpu` is never allocatable on the GPU nodes.
        if eks_spec is not None and eks_spec.gpu_nodes is not None:
            charts.append((True, addons.NVIDIA_DEVICE_PLUGIN, addons.NVIDIA_DEVICE_PLUGIN.values))
        releases = {}
        for enabled, chart, values in charts:
            if not enabled:
                continue
            values = addons.merged_values(values, wanted.values.get(chart.name, {}))
            repository = k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository) if chart.repository else None
            releases[chart.name] = k8s.helm.v3.Release(
                f"{name}-{chart.name}",
                name=chart.name,
                chart=chart.chart,
                version=chart.version,
                repository_opts=repository,
                namespace=chart.namespace,
                create_namespace=True,
                values=values,
                # Pulumi waits for the release's workloads before the models that need them ("By default,
                # the provider waits until all resources are in a ready state", pulumi_kubernetes
                # helm/v3/Release.py `skip_await`); on EKS those workloads need the node groups first.
                opts=pulumi.ResourceOptions(parent=self, provider=self.k8s_provider, depends_on=self.node_groups),
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
