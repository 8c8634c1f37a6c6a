"""Pulumi components: the `Platform` of a stack and one `ModelDeployment` per served model."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import flagger, observability, tfserving, workload
from infra.manifest import LABEL_CANARY, LABEL_STABLE, ServedModel
from infra.object_store import fetch_script
from infra.settings import RouteKind, StackSettings
from infra.workload import Workload

PLATFORM_TYPE = "model-serving:platform:Platform"
MODEL_TYPE = "model-serving:model:ModelDeployment"


class Platform(pulumi.ComponentResource):
    """What every model of a stack shares: the namespace, its default-deny policy, the Gateway."""

    namespace_name: pulumi.Output[str]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__(PLATFORM_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", **workload.namespace(settings), opts=child)
        self.namespace_name = namespace.metadata.name
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny", **workload.default_deny(self.namespace_name), opts=child
        )
        k8s.networking.v1.NetworkPolicy(f"{name}-allow-dns", **workload.allow_dns(self.namespace_name), opts=child)
        gateway = settings.routing.gateway
        if settings.routing.kind is RouteKind.gateway and gateway is not None and gateway.create:
            k8s.apiextensions.CustomResource(
                f"{name}-gateway", **workload.gateway(settings, self.namespace_name), opts=child
            )
        self.register_outputs({"namespace": self.namespace_name})


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
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(MODEL_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Names known up front are passed as plain strings: ordering comes from the
        # component's `depends_on` (the Platform), and fewer Outputs keep large stacks fast.
        namespace = settings.namespace

        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", **workload.service_account(model, settings, namespace), opts=child
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
            route_opts = pulumi.ResourceOptions(parent=self, depends_on=services)
            if settings.routing.kind is RouteKind.gateway:
                k8s.apiextensions.CustomResource(
                    f"{name}-route", **workload.http_route(model, settings, namespace), opts=route_opts
                )
            else:
                k8s.networking.v1.Ingress(
                    f"{name}-ingress", **workload.ingress(model, settings, namespace), opts=route_opts
                )
        self.register_outputs({"versions": dict(model.version_labels)})

    def _monitoring(self, name: str, model: ServedModel, settings: StackSettings) -> None:
        child = pulumi.ResourceOptions(parent=self)
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
        child = pulumi.ResourceOptions(parent=self)
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
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{prefix}-hpa", **workload.autoscaler(track, namespace, deployment.metadata.name), opts=child
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{prefix}-pdb", **workload.disruption_budget(track, namespace, whole_model=flagger_target), opts=child
        )
        if flagger_target:
            templates = {
                metric: k8s.apiextensions.CustomResource(f"{name}-{metric}", **kwargs, opts=child)
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
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*templates.values()]),
            )
            return None
        return k8s.core.v1.Service(f"{prefix}-service", **workload.service(track, namespace), opts=child)
