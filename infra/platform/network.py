"""Pure builders of the stack's shared Kubernetes objects: namespace, default-deny policies, GatewayClass, Gateway."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.spec.settings import StackSettings

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"
DNS_PORT = 53
# The controller name Envoy Gateway's chart configures (envoyproxy/gateway@v1.9.0
# charts/gateway-helm/values.tmpl.yaml:L172-L176) and its quickstart's `eg` class uses
# (examples/kubernetes/quickstart.yaml:L1-L6). The chart's templates declare no GatewayClass
# (charts/gateway-helm/templates/: no `kind: GatewayClass`), so the stack declares its own.
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"


def platform_labels() -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "model-serving", "app.kubernetes.io/managed-by": "pulumi"}


def namespace(settings: StackSettings) -> dict[str, Any]:
    """Namespace kwargs; the `restricted` Pod Security Standard is enforced, not just advised."""
    labels = platform_labels() | {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
    }
    return {"metadata": k8s.meta.v1.ObjectMetaArgs(name=settings.namespace, labels=labels)}


def default_deny(namespace_name: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "metadata": k8s.meta.v1.ObjectMetaArgs(namespace=namespace_name, labels=platform_labels()),
        "spec": k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(), policy_types=["Ingress", "Egress"]
        ),
    }


def allow_dns(namespace_name: pulumi.Input[str]) -> dict[str, Any]:
    """Every pod may resolve names through the cluster DNS (the fetcher needs the store's name)."""
    return {
        "metadata": k8s.meta.v1.ObjectMetaArgs(namespace=namespace_name, labels=platform_labels()),
        "spec": k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(),
            policy_types=["Egress"],
            egress=[
                k8s.networking.v1.NetworkPolicyEgressRuleArgs(
                    to=[
                        k8s.networking.v1.NetworkPolicyPeerArgs(
                            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                match_labels={"kubernetes.io/metadata.name": "kube-system"}
                            ),
                            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}),
                        )
                    ],
                    ports=[
                        k8s.networking.v1.NetworkPolicyPortArgs(protocol="UDP", port=DNS_PORT),
                        k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=DNS_PORT),
                    ],
                )
            ],
        ),
    }


def gateway_class(settings: StackSettings) -> dict[str, Any]:
    """GatewayClass kwargs: the class the stack's Gateway names, run by Envoy Gateway (cluster-scoped)."""
    routing = settings.routing
    assert routing.gateway is not None and routing.gateway.class_name is not None
    return {
        "api_version": GATEWAY_API_VERSION,
        "kind": "GatewayClass",
        # The Gateway refers to the class by name: this one is fixed, not auto-named.
        "metadata": k8s.meta.v1.ObjectMetaArgs(name=routing.gateway.class_name, labels=platform_labels()),
        "spec": {"controllerName": ENVOY_GATEWAY_CONTROLLER},
    }


def gateway(settings: StackSettings, namespace_name: pulumi.Input[str]) -> dict[str, Any]:
    """Gateway kwargs: one HTTPS listener for the stack's host (and one for its gRPC names), routes
    from this namespace only."""
    routing = settings.routing
    assert routing.gateway is not None and routing.tls_secret_name is not None
    return {
        "api_version": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": k8s.meta.v1.ObjectMetaArgs(
            name=routing.gateway.name, namespace=namespace_name, labels=platform_labels()
        ),
        "spec": {
            "gatewayClassName": routing.gateway.class_name,
            "listeners": [
                {
                    "name": routing.gateway.listener,
                    "protocol": "HTTPS",
                    "port": 443,
                    "hostname": routing.host,
                    "tls": {
                        "mode": "Terminate",
                        "certificateRefs": [{"kind": "Secret", "name": routing.tls_secret_name}],
                    },
                    "allowedRoutes": {"namespaces": {"from": "Same"}},
                },
                *grpc_listeners(settings),
            ],
        },
    }


def grpc_listeners(settings: StackSettings) -> list[dict[str, Any]]:
    """The listener for `*.grpc.<host>`, where each gRPC model has its own name (routing.grpc_host).

    HTTPS like the REST listener: gRPC needs HTTP/2, which clients negotiate by ALPN during the
    TLS handshake, and implementations supporting GRPCRoute on HTTPS listeners must accept that
    (Gateway API v1.6.1 GRPCRoute CRD description). Only GRPCRoutes attach to it.
    """
    routing = settings.routing
    if routing.grpc is None:
        return []
    assert routing.grpc.tls_secret_name is not None  # settings validation: a declared Gateway needs it
    return [
        {
            "name": routing.grpc.listener,
            "protocol": "HTTPS",
            "port": 443,
            "hostname": f"*.{routing.grpc_domain}",
            "tls": {
                "mode": "Terminate",
                "certificateRefs": [{"kind": "Secret", "name": routing.grpc.tls_secret_name}],
            },
            "allowedRoutes": {
                "namespaces": {"from": "Same"},
                "kinds": [{"group": GATEWAY_API_GROUP, "kind": "GRPCRoute"}],
            },
        }
    ]
