"""The ServingPool component: one TF-Serving workload serving the stable version of many models."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import observability, pool, tfserving
from infra.model.component import child_options, reader_role, scaled_object
from infra.model.fetch import fetch_pool_script, fetch_script
from infra.platform.component import Platform
from infra.spec.placement import Shard
from infra.spec.scaling import ScalingMetric
from infra.spec.settings import StackSettings

POOL_TYPE = "model-serving:model:ServingPool"


class ServingPool(pulumi.ComponentResource):
    """ConfigMap, Deployment, Service, HPA, PDB, NetworkPolicy, ServiceAccount and monitoring of
    one pool shard, named `<shard>-*`. Its members' routes are their own ModelDeployments'."""

    def __init__(
        self,
        name: str,
        shard: Shard,
        settings: StackSettings,
        platform: Platform,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(POOL_TYPE, name, None, opts)
        self.platform = platform
        namespace = settings.namespace
        child = self._opts()
        role_arn = self._reader_role(name, shard, settings)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa", **pool.service_account(shard, settings, namespace, role_arn), opts=child
        )
        files = pool.config_files(shard, settings, fetch_script(), fetch_pool_script())
        config = k8s.core.v1.ConfigMap(f"{name}-config", **pool.config_map(shard, files, namespace), opts=child)
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            **pool.deployment(shard, settings, namespace, config.metadata.name, tfserving.content_hash(files)),
            opts=self._opts(account),
        )
        scaling = shard.pool.autoscaling
        if scaling.metric is ScalingMetric.requests:
            # Every member's calls: the members share the pods.
            scaled_object(self, platform, name, settings, deployment, pool.metadata(shard, namespace), scaling, None)
        else:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa",
                **pool.autoscaler(shard, namespace, deployment.metadata.name),
                opts=self._opts("metrics-server"),
            )
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", **pool.disruption_budget(shard, namespace), opts=child)
        k8s.networking.v1.NetworkPolicy(f"{name}-netpol", **pool.network_policy(shard, settings, namespace), opts=child)
        # Waits for its Deployment, as a model's Service does (infra/model/component.py).
        self.service = k8s.core.v1.Service(
            f"{name}-service", **pool.service(shard, namespace), opts=self._opts(deployment)
        )
        if settings.monitoring.prometheus_operator:
            monitoring = self._opts("kube-prometheus-stack")
            # Whole members, not their stable track: a member's SLO alerts leave its shadow's series
            # out (observability.selectors, docs/shadow.md).
            members = list(shard.members)
            k8s.apiextensions.CustomResource(
                f"{name}-monitor",
                **observability.pool_service_monitor(shard.name, pool.POOL_LABEL, settings),
                opts=monitoring,
            )
            k8s.apiextensions.CustomResource(
                f"{name}-alerts",
                **observability.pool_prometheus_rule(shard.name, pool.POOL_LABEL, members, settings, scaling.metric),
                opts=monitoring,
            )
        if settings.monitoring.grafana_dashboards:
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard",
                **observability.pool_dashboard_config_map(shard.name, pool.POOL_LABEL, settings),
                opts=self._opts("kube-prometheus-stack"),
            )
        self.register_outputs({"members": list(shard.member_names)})

    def _opts(self, *needs: Any) -> pulumi.ResourceOptions:
        return child_options(self, self.platform, *needs)

    def _reader_role(self, name: str, shard: Shard, settings: StackSettings) -> pulumi.Output[str] | None:
        """A read-only IAM role (IRSA) over every member's versions, when the stack manages the store."""
        manifests = [member.manifest for member in shard.members]
        return reader_role(self, self.platform, name, settings, shard.name, manifests)
