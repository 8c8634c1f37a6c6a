"""Pulumi components: the `Platform` of a stack and one `ModelDeployment` per served model."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import cloud, flagger, observability, tfserving, workload
from infra.manifest import LABEL_CANARY, LABEL_STABLE, ServedModel
from infra.object_store import fetch_script
from infra.settings import ClusterMode, RouteKind, StackSettings
from infra.workload import Workload

PLATFORM_TYPE = "model-serving:platform:Platform"
MODEL_TYPE = "model-serving:model:ModelDeployment"


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
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", **workload.namespace(settings), opts=child)
        self.namespace = namespace
        self.namespace_name = namespace.metadata.name
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny", **workload.default_deny(self.namespace_name), opts=child
        )
        k8s.networking.v1.NetworkPolicy(f"{name}-allow-dns", **workload.allow_dns(self.namespace_name), opts=child)
        self.addons = self._addons(name, settings)
        gateway = settings.routing.gateway
        if settings.routing.kind is RouteKind.gateway and gateway is not None and gateway.create:
            self.gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                **workload.gateway(settings, self.namespace_name),
                # The Gateway API CRDs come with Envoy Gateway when the stack installs it.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    provider=self.k8s_provider,
                    depends_on=[r for n, r in self.addons.items() if n == cloud.ENVOY_GATEWAY.name],
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
            f"{name}-node-role", assume_role_policy=json.dumps(cloud.node_trust_policy()), opts=aws_opts
        )
        for index, policy_arn in enumerate(cloud.EKS_NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-node-role-{index}", role=node_role.name, policy_arn=policy_arn, opts=aws_opts
            )
        cluster = eks.Cluster(
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
                cluster=cluster,
                node_role=node_role,
                instance_types=[pool.instance_type],
                scaling_config={
                    "min_size": pool.min_size,
                    "desired_size": pool.desired_size,
                    "max_size": pool.max_size,
                },
                labels={cloud.NODE_POOL_LABEL: pool_name},
                gpu=gpu or None,
                taints=[{"key": cloud.GPU_TAINT["key"], "value": cloud.GPU_TAINT["value"], "effect": "NO_SCHEDULE"}]
                if gpu
                else None,
                opts=pulumi.ResourceOptions(parent=self, providers={"aws": self.aws_provider}),
            )
        self.oidc = (cluster.oidc_provider_arn, cluster.oidc_issuer)
        return cluster.kubeconfig_json

    def _addons(self, name: str, settings: StackSettings) -> dict[str, k8s.helm.v3.Release]:
        wanted = settings.addons
        charts = [
            (wanted.envoy_gateway, cloud.ENVOY_GATEWAY),
            (wanted.metrics_server, cloud.METRICS_SERVER),
            (wanted.kube_prometheus_stack, cloud.KUBE_PROMETHEUS_STACK),
            (wanted.flagger, cloud.FLAGGER),
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
            policy=json.dumps(cloud.tls_only_policy(store)),
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
            policy=json.dumps(cloud.publisher_policy(store)),
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


class ModelDeployment(pulumi.ComponentResource):
    """Everything one model needs in one environment: config, workloads, scaling, routing.

    The stable workload's resources are named `<model>-config`, `<model>-deployment`, ...;
    a canary adds `<model>-canary-*` and removing it deletes exactly those.
    """

    def __init__(
        self,
        name: str,
        model: ServedModel,
        settings: StackSettings,
        platform: Platform,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(MODEL_TYPE, name, None, opts)
        self.platform = platform
        # Names known up front are passed as plain strings, and each child waits explicitly for
        # what it needs (a component's depends_on does not reach its children).
        namespace = settings.namespace
        child = self._opts()
        role_arn = self._reader_role(name, model, settings)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", **workload.service_account(model, settings, namespace, role_arn), opts=child
        )
        services = []
        for track in (LABEL_STABLE, LABEL_CANARY):
            if track in model.version_labels:
                services.append(self._workload(name, Workload.of(model, track), settings, account))
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", **workload.network_policy(model, settings, namespace), opts=child
        )
        self._monitoring(name, model, settings)
        if settings.flagger:
            # Flagger owns the apex Service and the HTTPRoute (both named after the model).
            self.register_outputs({"versions": dict(model.version_labels)})
            return
        if model.serving.ingress:
            route_opts = self._opts("envoy-gateway", *services, getattr(platform, "gateway", None))
            if settings.routing.kind is RouteKind.gateway:
                k8s.apiextensions.CustomResource(
                    f"{name}-route", **workload.http_route(model, settings, namespace), opts=route_opts
                )
            else:
                k8s.networking.v1.Ingress(
                    f"{name}-ingress", **workload.ingress(model, settings, namespace), opts=route_opts
                )
        self.register_outputs({"versions": dict(model.version_labels)})

    def _opts(self, *needs: Any) -> pulumi.ResourceOptions:
        """Child options: parent, and depends_on the namespace plus what is named — add-on
        releases by name (when the stack installs them) or resources."""
        depends: list[pulumi.Resource] = [self.platform.namespace]
        for need in needs:
            if isinstance(need, str):
                if need in self.platform.addons:
                    depends.append(self.platform.addons[need])
            elif need is not None:
                depends.append(need)
        return pulumi.ResourceOptions(parent=self, depends_on=depends)

    def _reader_role(self, name: str, model: ServedModel, settings: StackSettings) -> pulumi.Output[str] | None:
        """A read-only IAM role for the model's pods (IRSA) when the stack manages the store."""
        if not settings.object_store.managed or self.platform.oidc is None:
            return None
        import pulumi_aws as aws

        provider_arn, issuer = self.platform.oidc
        trust = pulumi.Output.all(provider_arn, issuer).apply(
            lambda values: json.dumps(cloud.irsa_trust_policy(values[0], values[1], settings.namespace, model.name))
        )
        opts = pulumi.ResourceOptions(parent=self, provider=self.platform.aws_provider)
        role = aws.iam.Role(f"{name}-reader", assume_role_policy=trust, opts=opts)
        aws.iam.RolePolicy(
            f"{name}-reader-policy",
            role=role.id,
            policy=json.dumps(cloud.reader_policy(settings.object_store, model.manifest)),
            opts=opts,
        )
        return role.arn

    def _monitoring(self, name: str, model: ServedModel, settings: StackSettings) -> None:
        child = self._opts("kube-prometheus-stack")
        if settings.monitoring.prometheus_operator:
            k8s.apiextensions.CustomResource(
                f"{name}-monitor", **observability.service_monitor(model, settings), opts=child
            )
            k8s.apiextensions.CustomResource(
                f"{name}-alerts", **observability.prometheus_rule(model, settings), opts=child
            )
        if settings.monitoring.grafana_dashboards:
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard", **observability.dashboard_config_map(model, settings), opts=child
            )

    def _workload(
        self, name: str, track: Workload, settings: StackSettings, account: k8s.core.v1.ServiceAccount
    ) -> k8s.core.v1.Service | None:
        """ConfigMap, Deployment, Service, HPA and PDB of one track; returns its Service.

        Under Flagger the stable track gets a Canary and its MetricTemplates instead of a
        Service: Flagger creates the apex, primary and canary Services itself.
        """
        prefix = name if track.track == LABEL_STABLE else f"{name}-{track.track}"
        namespace = settings.namespace
        child = self._opts()
        flagger_target = settings.flagger and track.track == LABEL_STABLE
        files = tfserving.config_files(track.model, fetch_script())
        config = k8s.core.v1.ConfigMap(f"{prefix}-config", **workload.config_map(track, files, namespace), opts=child)
        deployment = k8s.apps.v1.Deployment(
            f"{prefix}-deployment",
            **workload.deployment(
                track,
                settings,
                namespace,
                config_map_name=config.metadata.name,
                config_hash=tfserving.content_hash(files),
                service_account_name=track.name,
                flagger_target=flagger_target,
            ),
            opts=self._opts(account),
        )
        autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{prefix}-hpa",
            **workload.autoscaler(track, namespace, deployment.metadata.name),
            opts=self._opts("metrics-server"),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{prefix}-pdb", **workload.disruption_budget(track, namespace, whole_model=flagger_target), opts=child
        )
        if flagger_target:
            templates = {
                metric: k8s.apiextensions.CustomResource(f"{name}-{metric}", **kwargs, opts=self._opts("flagger"))
                for metric, kwargs in flagger.metric_templates(track.model, settings).items()
            }
            k8s.apiextensions.CustomResource(
                f"{name}-rollout",
                **flagger.canary(
                    track.model,
                    settings,
                    deployment.metadata.name,
                    autoscaler.metadata.name,
                    {metric: template.metadata["name"] for metric, template in templates.items()},
                ),
                opts=self._opts("flagger", "envoy-gateway", *templates.values()),
            )
            return None
        return k8s.core.v1.Service(f"{prefix}-service", **workload.service(track, namespace), opts=child)
