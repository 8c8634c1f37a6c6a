"""Pure builders of a model's routes on the stack's host: Gateway API HTTPRoute or Ingress, and GRPCRoute."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.model.workload import Workload, metadata
from infra.platform.network import GATEWAY_API_GROUP, GATEWAY_API_VERSION
from infra.spec.manifest import LABEL_CANARY, LABEL_STABLE, ServedModel
from infra.spec.settings import RouteKind, StackSettings
from infra.spec.shadow import LABEL_SHADOW

# TF-Serving's REST calls on a model: `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:<verb>`
# (tensorflow/serving tensorflow_serving/g3doc/api_rest.md, "Classify and Regress API" and
# "Predict API"). A prefix match works element by element: PathPrefix "matches full path elements
# ... the paths `/abc`, `/abc/`, and `/abc/def` would all match the prefix `/abc`, but the path
# `/abcd` would not" (Gateway API v1.6.1 HTTPRoute CRD, tests/schemas/gateway-api-v1.6.1/
# httproutes.yaml:L2661-L2665), and Envoy Gateway programs it as Envoy's
# `path_separated_prefix` (envoyproxy/gateway@v1.9.0 internal/xds/translator/route.go:L266-L278);
# an Ingress `Prefix` path is split by "/" the same way. So `/v1/models/iris:predict`, whose last
# element is `iris:predict`, needs a match of its own, or the proxy answers 404.
REST_VERBS = ("predict", "classify", "regress")


def route_path(model_name: str) -> str:
    return f"/v1/models/{model_name}"


def verb_paths(model_name: str) -> list[str]:
    """The exact paths of the calls on the model's default version (`/v1/models/<name>:predict`, ...)."""
    return [f"{route_path(model_name)}:{verb}" for verb in REST_VERBS]


def path_matches(model_name: str) -> list[dict[str, Any]]:
    """HTTPRoute matches: the model's path and everything under it, and its verbs on the default version."""
    return [{"path": {"type": "PathPrefix", "value": route_path(model_name)}}] + [
        {"path": {"type": "Exact", "value": path}} for path in verb_paths(model_name)
    ]


# TF-Serving's gRPC services (tensorflow_serving/apis/prediction_service.proto, model_service.proto).
GRPC_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def _parent(settings: StackSettings, listener: str) -> dict[str, Any]:
    gateway = settings.routing.gateway
    assert gateway is not None  # settings validation: kind gateway has gateway settings
    parent: dict[str, Any] = {
        "group": GATEWAY_API_GROUP,
        "kind": "Gateway",
        "name": gateway.name,
        "sectionName": listener,
    }
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    return parent


def http_route(
    model: ServedModel, settings: StackSettings, namespace: pulumi.Input[str], pool: str | None = None
) -> dict[str, Any]:
    """Gateway API HTTPRoute kwargs (CustomResource): /v1/models/<name> on the host to the REST port
    (of the model's serving pool, when `pool` names its shard)."""
    # A canary splits the route by weight between the stable and the canary Service.
    gateway = settings.routing.gateway
    assert gateway is not None  # settings validation: kind gateway has gateway settings
    parent = _parent(settings, gateway.listener)
    return {
        "api_version": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": metadata(Workload.of(model, LABEL_STABLE), namespace),
        "spec": {
            "parentRefs": [parent],
            "hostnames": [settings.routing.host],
            "rules": [
                {
                    # PathPrefix matches whole path elements: /v1/models/iris is not /v1/models/iris2.
                    "matches": path_matches(model.name),
                    "backendRefs": backend_refs(model, pool=pool),
                }
                | mirror_filters(model)
            ],
        },
    }


def grpc_route(
    model: ServedModel,
    settings: StackSettings,
    namespace: pulumi.Input[str],
    flagger: bool = False,
    pool: str | None = None,
) -> dict[str, Any]:
    """Gateway API GRPCRoute kwargs: TF-Serving's gRPC services on `<model>.grpc.<host>` to the gRPC port.

    A route cannot pick the model by method: every model's PredictionService has the same
    methods (`/tensorflow.serving.PredictionService/Predict`, ...), and the model's name travels
    inside the protobuf body (`model_spec.name`), which no Gateway API match reads (GRPCRoute
    matches the service, method and headers only). So each model gets its own host name, the
    `:authority` a client dials, like a virtual host; one wildcard listener and certificate
    (`*.grpc.<host>`) cover them all.

    On a Flagger stack the backend is the apex Service `<model>` that Flagger generates; it
    carries the gRPC port because the Canary sets `portDiscovery` (infra/model/flagger.py).
    gRPC then reaches the primary only; Flagger shifts the REST route's weights during an
    analysis, not this route's.
    """
    routing = settings.routing
    assert routing.grpc is not None  # project validation: a gRPC model needs routing.grpc
    backends = (
        [{"name": model.name, "port": tfserving.GRPC_PORT}]
        if flagger
        else backend_refs(model, tfserving.GRPC_PORT, pool=pool)
    )
    return {
        "api_version": GATEWAY_API_VERSION,
        "kind": "GRPCRoute",
        "metadata": metadata(Workload.of(model, LABEL_STABLE), namespace),
        "spec": {
            "parentRefs": [_parent(settings, routing.grpc.listener)],
            "hostnames": [routing.grpc_host(model.name)],
            "rules": [
                {
                    "matches": [{"method": {"type": "Exact", "service": service}} for service in GRPC_SERVICES],
                    "backendRefs": backends,
                }
                | mirror_filters(model, tfserving.GRPC_PORT)
            ],
        },
    }


def backend_refs(model: ServedModel, port: int = tfserving.REST_PORT, pool: str | None = None) -> list[dict[str, Any]]:
    """The stable Service (the model's own, or its pool shard's), and the canary's by weight: a
    pooled model's canary runs beside the pool as a workload of its own."""
    stable = pool or Workload.of(model, LABEL_STABLE).instance
    if not model.has_canary:
        return [{"name": stable, "port": port}]
    canary = Workload.of(model, LABEL_CANARY)
    weight = model.canary_weight or 0
    return [
        {"name": stable, "port": port, "weight": 100 - weight},
        {"name": canary.instance, "port": port, "weight": weight},
    ]


def mirror_filters(model: ServedModel, port: int = tfserving.REST_PORT) -> dict[str, Any]:
    """`{"filters": [RequestMirror]}` copying `percent`% of the rule's requests to the shadow's
    Service (docs/shadow.md), or nothing without a shadow.

    Gateway API v1.6.1: "responses from that destination are ignored" (RequestMirror filter,
    tests/schemas/gateway-api-v1.6.1/httproutes.yaml:2143-2152; GRPCRoute grpcroutes.yaml:
    1246-1397); `percent` and `fraction` exclude each other (CEL rule, httproutes.yaml:2293) and a
    Service backendRef needs its port (CEL rule :2249). Envoy Gateway v1.9 translates it for
    HTTPRoute and GRPCRoute alike (envoyproxy/gateway@v1.9.0 internal/gatewayapi/filters.go:127-128,
    :203-204, processRequestMirrorFilter :1066-1130) into one Envoy RequestMirrorPolicy with a
    runtime fraction (internal/xds/translator/route.go:659-675), which is "fire and forget": Envoy
    does not wait for the shadow, and returns the primary's response (envoyproxy/envoy
    api/envoy/config/route/v3/route_components.proto, RouteAction.RequestMirrorPolicy). The Host
    header is kept (DisableShadowHostSuffixAppend, route.go:659-675).
    """
    if not model.has_shadow:
        return {}
    mirror = {"backendRef": {"name": Workload.of(model, LABEL_SHADOW).instance, "port": port}}
    return {"filters": [{"type": "RequestMirror", "requestMirror": mirror | {"percent": model.shadow_percent}}]}


def ingress(
    model: ServedModel, settings: StackSettings, namespace: pulumi.Input[str], pool: str | None = None
) -> dict[str, Any]:
    """networking.k8s.io/v1 Ingress kwargs, for clusters that still run an Ingress controller."""
    routing = settings.routing
    tls = None
    if routing.tls_secret_name:
        tls = [k8s.networking.v1.IngressTLSArgs(hosts=[routing.host], secret_name=routing.tls_secret_name)]
    backend = k8s.networking.v1.IngressBackendArgs(
        service=k8s.networking.v1.IngressServiceBackendArgs(
            name=pool or model.name, port=k8s.networking.v1.ServiceBackendPortArgs(name="http")
        )
    )
    return {
        "metadata": metadata(Workload.of(model, LABEL_STABLE), namespace),
        "spec": k8s.networking.v1.IngressSpecArgs(
            ingress_class_name=routing.ingress_class_name,
            tls=tls,
            rules=[
                k8s.networking.v1.IngressRuleArgs(
                    host=routing.host,
                    http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                        # Prefix is element-wise here too ("/foo/bar matches /foo/bar/baz, but does
                        # not match /foo/barbaz", kubernetes/website content/en/docs/concepts/
                        # services-networking/ingress.md, "Examples"): the verbs get Exact paths.
                        paths=[
                            k8s.networking.v1.HTTPIngressPathArgs(path=path, path_type=path_type, backend=backend)
                            for path, path_type in [(route_path(model.name), "Prefix")]
                            + [(verb_path, "Exact") for verb_path in verb_paths(model.name)]
                        ]
                    ),
                )
            ],
        ),
    }


def grpc_target(model_name: str, settings: StackSettings) -> str | None:
    """`host:port` a gRPC client dials for the model (TLS), or None without routing.grpc."""
    if settings.routing.grpc is None:
        return None
    return f"{settings.routing.grpc_host(model_name)}:443"


def rest_url(model_name: str, settings: StackSettings) -> str:
    scheme = "https" if settings.routing.tls_secret_name or settings.routing.kind is RouteKind.gateway else "http"
    return f"{scheme}://{settings.routing.host}{route_path(model_name)}"
