"""Pure builders of what a serving workload's pods may talk to: NetworkPolicies on top of the
namespace's default deny (a model's, every track of it; a serving pool's)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.model.workload import Workload, metadata, model_selector
from infra.spec.manifest import LABEL_STABLE, ServedModel
from infra.spec.settings import StackSettings


def _namespace_peer(name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": name})
    )


def _tcp(port: int) -> k8s.networking.v1.NetworkPolicyPortArgs:
    return k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=port)


def store_egress(settings: StackSettings) -> k8s.networking.v1.NetworkPolicyEgressRuleArgs:
    """The egress rule to the object store: its pods when it runs in the cluster, else address blocks."""
    store = settings.object_store
    if store.in_cluster is None:
        return k8s.networking.v1.NetworkPolicyEgressRuleArgs(
            to=[
                k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=c))
                for c in store.egress_cidrs
            ],
            ports=[_tcp(store.port)],
        )
    # A connection to a Service is translated to one of its pods (IP and targetPort) before
    # the policy sees it: ipBlock is for cluster-external IPs (kubernetes/website
    # content/en/docs/concepts/services-networking/network-policies.md), and a rule's port is
    # "a numerical or named port on a pod" (k8s.io/api networking/v1 types.go,
    # NetworkPolicyPort). So the rule names the store's pods and their container port. One
    # peer with both selectors means "these pods in that namespace", not either of them (same
    # page, "Behavior of to and from selectors"); the API server sets the namespace's name as
    # its `kubernetes.io/metadata.name` label ("Well-Known Labels, Annotations and Taints").
    in_cluster = store.in_cluster
    peer = k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={"kubernetes.io/metadata.name": in_cluster.namespace}
        ),
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(in_cluster.pod_selector)),
    )
    return k8s.networking.v1.NetworkPolicyEgressRuleArgs(to=[peer], ports=[_tcp(in_cluster.port)])


def network_policy(model: ServedModel, settings: StackSettings, namespace: pulumi.Input[str]) -> dict[str, Any]:
    """What a model's pods may talk to, on top of the namespace's default deny."""
    return {
        "metadata": metadata(Workload.of(model, LABEL_STABLE), namespace),
        # Every track of the model: the canary's pods get the same allowances.
        "spec": network_policy_spec(model_selector(model.name), settings, model.serves_grpc),
    }


def network_policy_spec(
    pod_selector: dict[str, str], settings: StackSettings, grpc_routed: bool
) -> k8s.networking.v1.NetworkPolicySpecArgs:
    """Serving ports from the namespace and the route's proxies (gRPC only where routed),
    metrics to Prometheus, and egress to the object store only."""
    serving_ports = [_tcp(tfserving.GRPC_PORT), _tcp(tfserving.REST_PORT)]
    ingress = [
        # Clients in the namespace, and the route's proxies.
        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
            from_=[k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=k8s.meta.v1.LabelSelectorArgs())],
            ports=serving_ports,
        ),
        # The route's proxies: REST, and gRPC where a GRPCRoute sends it.
        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
            from_=[_namespace_peer(settings.routing.controller_namespace)],
            ports=serving_ports if grpc_routed else [_tcp(tfserving.REST_PORT)],
        ),
    ]
    if settings.monitoring.prometheus_namespace:
        ingress.append(
            k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                from_=[_namespace_peer(settings.monitoring.prometheus_namespace)], ports=[_tcp(tfserving.REST_PORT)]
            )
        )
    egress = [store_egress(settings)]  # the init container reaches the object store
    return k8s.networking.v1.NetworkPolicySpecArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=pod_selector),
        policy_types=["Ingress", "Egress"],
        ingress=ingress,
        egress=egress,
    )
