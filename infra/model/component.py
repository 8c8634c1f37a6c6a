"""The ModelDeployment component: everything one model needs in one environment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import flagger, keda, network_policy, observability, routing, tfserving, workload
from infra.model.fetch import fetch_script
from infra.model.workload import Workload
from infra.platform import iam
from infra.platform.component import Platform
from infra.spec.manifest import LABEL_CANARY, LABEL_STABLE, Autoscaling, ModelManifest, ServedModel
from infra.spec.scaling import ScalingMetric
from infra.spec.serving_pools import PoolAutoscaling
from infra.spec.settings import RouteKind, StackSettings
from infra.spec.shadow import LABEL_SHADOW

MODEL_TYPE = "model-serving:model:ModelDeployment"


def child_options(parent: pulumi.Resource, platform: Platform, *needs: Any) -> pulumi.ResourceOptions:
    """Child options: parent, and depends_on the namespace plus what is named — add-on
    releases by name (when the stack installs them) or resources."""
    depends: list[pulumi.Resource] = [platform.namespace]
    for need in needs:
        if isinstance(need, str):
            if need in platform.addons:
                depends.append(platform.addons[need])
        elif need is not None:
            depends.append(need)
    return pulumi.ResourceOptions(parent=parent, depends_on=depends)


def scaled_object(
    parent: pulumi.Resource,
    platform: Platform,
    name: str,
    settings: StackSettings,
    deployment: k8s.apps.v1.Deployment,
    metadata: k8s.meta.v1.ObjectMetaArgs,
    scaling: Autoscaling | PoolAutoscaling,
    model_name: str | None,
) -> k8s.apiextensions.CustomResource:
    """`<name>-scaler`, the KEDA ScaledObject of a Deployment scaled on requests, in place of its HPA
    (infra/model/keda.py). `scaling`: the model's or the pool's autoscaling; `model_name`: count only
    that model's calls (None: every model the pods serve)."""
    address = settings.monitoring.prometheus_address
    assert address is not None  # required by infra/spec/project.py request_scaling_errors
    query = deployment.metadata.name.apply(lambda pods: keda.request_rate_query(settings.namespace, pods, model_name))
    return k8s.apiextensions.CustomResource(
        f"{name}-scaler",
        **keda.scaled_object(
            metadata,
            deployment.metadata.name,
            scaling.min_replicas,
            scaling.max_replicas,
            scaling.target_requests_per_second,
            query,
            address,
        ),
        opts=child_options(parent, platform, "keda"),
    )


def reader_role(
    parent: pulumi.Resource,
    platform: Platform,
    name: str,
    settings: StackSettings,
    service_account: str,
    manifests: Sequence[ModelManifest],
) -> pulumi.Output[str] | None:
    """A read-only IAM role (IRSA) over the versions of `manifests`, which only the ServiceAccount
    `service_account` may assume; None unless the stack manages its store on EKS."""
    if not settings.object_store.managed or platform.oidc is None:
        return None
    import pulumi_aws as aws

    provider_arn, issuer = platform.oidc
    trust = pulumi.Output.all(provider_arn, issuer).apply(
        lambda values: json.dumps(iam.irsa_trust_policy(values[0], values[1], settings.namespace, service_account))
    )
    opts = pulumi.ResourceOptions(parent=parent, provider=platform.aws_provider)
    role = aws.iam.Role(f"{name}-reader", assume_role_policy=trust, opts=opts)
    aws.iam.RolePolicy(
        f"{name}-reader-policy",
        role=role.id,
        policy=json.dumps(iam.readers_policy(settings.object_store, manifests)),
        opts=opts,
    )
    return role.arn


class ModelDeployment(pulumi.ComponentResource):
    """Everything one model needs in one environment: config, workloads, scaling, routing.

    The stable workload's resources are named `<model>-config`, `<model>-deployment`, ...;
    a canary adds `<model>-canary-*`, a shadow `<model>-shadow-*`, and removing either deletes
    exactly those.
    """

    def __init__(
        self,
        name: str,
        model: ServedModel,
        settings: StackSettings,
        platform: Platform,
        opts: pulumi.ResourceOptions | None = None,
        pool: str | None = None,
        pool_service: pulumi.Resource | None = None,
    ):
        """`pool`: the serving-pool shard that serves the model's stable version (its ServingPool
        declares that workload; `pool_service` is its Service, when declared in this run)."""
        super().__init__(MODEL_TYPE, name, None, opts)
        self.platform = platform
        # Names known up front are passed as plain strings, and each child waits explicitly for
        # what it needs (a component's depends_on does not reach its children).
        namespace = settings.namespace
        child = self._opts()
        services: list[k8s.core.v1.Service | None] = [pool_service] if pool else []
        # A shadow (docs/shadow.md) is a track of its own, beside a pool as a canary is.
        tracks = [LABEL_CANARY, LABEL_SHADOW] if pool else [LABEL_STABLE, LABEL_CANARY, LABEL_SHADOW]
        if any(track in model.version_labels for track in tracks):
            role_arn = self._reader_role(name, model, settings)
            account = k8s.core.v1.ServiceAccount(
                f"{name}-sa", **workload.service_account(model, settings, namespace, role_arn), opts=child
            )
            for track in tracks:
                if track in model.version_labels:
                    services.append(self._workload(name, Workload.of(model, track), settings, account))
            k8s.networking.v1.NetworkPolicy(
                f"{name}-netpol", **network_policy.network_policy(model, settings, namespace), opts=child
            )
            self._monitoring(name, model, settings, pooled=pool is not None)
        gateway = getattr(platform, "gateway", None)
        if model.serves_grpc:
            # Flagger generates the apex Service this route targets on Flagger stacks; it declares
            # no GRPCRoute, so this one is ours there too.
            k8s.apiextensions.CustomResource(
                f"{name}-grpc-route",
                **routing.grpc_route(model, settings, namespace, flagger=settings.flagger, pool=pool),
                opts=self._opts("envoy-gateway", *(s for s in services if s is not None), gateway),
            )
        if settings.flagger:
            # Flagger owns the apex Service and the HTTPRoute (both named after the model).
            self.register_outputs({"versions": dict(model.version_labels)})
            return
        if model.serving.ingress:
            route_opts = self._opts("envoy-gateway", *services, gateway)
            if settings.routing.kind is RouteKind.gateway:
                k8s.apiextensions.CustomResource(
                    f"{name}-route", **routing.http_route(model, settings, namespace, pool=pool), opts=route_opts
                )
            else:
                k8s.networking.v1.Ingress(
                    f"{name}-ingress", **routing.ingress(model, settings, namespace, pool=pool), opts=route_opts
                )
        self.register_outputs({"versions": dict(model.version_labels)})

    def _opts(self, *needs: Any) -> pulumi.ResourceOptions:
        return child_options(self, self.platform, *needs)

    def _reader_role(self, name: str, model: ServedModel, settings: StackSettings) -> pulumi.Output[str] | None:
        """A read-only IAM role for the model's pods (IRSA) when the stack manages the store."""
        return reader_role(self, self.platform, name, settings, model.name, [model.manifest])

    def _monitoring(self, name: str, model: ServedModel, settings: StackSettings, pooled: bool = False) -> None:
        """ServiceMonitor, alerts and dashboard of the model's own workloads. A pooled model's pool
        carries its alerts; its canary workload gets a ServiceMonitor only."""
        child = self._opts("kube-prometheus-stack")
        if settings.monitoring.prometheus_operator:
            k8s.apiextensions.CustomResource(
                f"{name}-monitor", **observability.service_monitor(model, settings), opts=child
            )
        if pooled:
            return
        if settings.monitoring.prometheus_operator:
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
        scaling = track.model.serving.autoscaling
        if scaling.metric is ScalingMetric.requests:
            scaler = scaled_object(
                self,
                self.platform,
                prefix,
                settings,
                deployment,
                workload.metadata(track, namespace),
                scaling,
                track.name,
            )
            autoscaler_name = scaler.metadata["name"]
        else:
            autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{prefix}-hpa",
                **workload.autoscaler(track, namespace, deployment.metadata.name),
                opts=self._opts("metrics-server"),
            )
            autoscaler_name = autoscaler.metadata.name
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
                    autoscaler_name,
                    {metric: template.metadata["name"] for metric, template in templates.items()},
                ),
                opts=self._opts("flagger", "envoy-gateway", *templates.values()),
            )
            return None
        # The Service waits for its Deployment: when a selector change replaces the Deployment,
        # Pulumi creates the new one and awaits its readiness, then updates what depends on it,
        # and deletes the old one last (create-before-delete, the default for replacements:
        # https://www.pulumi.com/docs/iac/concepts/resources/options/deletebeforereplace/), so
        # the Service never selects only pods that are not ready yet.
        return k8s.core.v1.Service(
            f"{prefix}-service", **workload.service(track, namespace), opts=self._opts(deployment)
        )
