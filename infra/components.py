"""Pulumi components: the `Platform` of a stack and one `ModelDeployment` per served model."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import tfserving, workload
from infra.manifest import ServedModel
from infra.object_store import fetch_script
from infra.settings import RouteKind, StackSettings

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
    """Everything one model needs in one environment: config, workload, scaling, routing."""

    service_name: pulumi.Output[str]

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
        files = tfserving.config_files(model, fetch_script())

        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", **workload.service_account(model, settings, namespace), opts=child
        )
        config = k8s.core.v1.ConfigMap(f"{name}-config", **workload.config_map(model, files, namespace), opts=child)
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            **workload.deployment(
                model,
                settings,
                namespace,
                config_map_name=config.metadata.name,
                config_hash=tfserving.content_hash(files),
                service_account_name=model.name,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        service = k8s.core.v1.Service(f"{name}-service", **workload.service(model, namespace), opts=child)
        self.service_name = service.metadata.name
        route_opts = pulumi.ResourceOptions(parent=self, depends_on=[service])
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa", **workload.autoscaler(model, namespace, deployment.metadata.name), opts=child
        )
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", **workload.disruption_budget(model, namespace), opts=child)
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol", **workload.network_policy(model, settings, namespace), opts=child
        )
        if model.serving.ingress:
            if settings.routing.kind is RouteKind.gateway:
                k8s.apiextensions.CustomResource(
                    f"{name}-route", **workload.http_route(model, settings, namespace, model.name), opts=route_opts
                )
            else:
                k8s.networking.v1.Ingress(
                    f"{name}-ingress", **workload.ingress(model, settings, namespace, model.name), opts=route_opts
                )
        self.register_outputs({"service": self.service_name, "versions": dict(model.version_labels)})
