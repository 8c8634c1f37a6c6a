"""Checks of what we declare against what the engines do with it, one per finding of a review of
the rendered objects against pulumi-eks, the Cluster Autoscaler and Flagger (issue 24): each
fails `modelctl plan` and the policy pack if the mistake comes back.
"""

from __future__ import annotations

from policy import webhooks
from policy.engines import (
    CANARY,
    SERVICE,
    LabelIndex,
    PodTemplate,
    Resource,
    flagger_outcome,
    is_kubernetes,
    pod_templates,
    selects,
)
from policy.netpol import Endpoint, PolicyIndex, blocked_by

EKS_NODE_GROUP = "eks:index:ManagedNodeGroup"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# kubernetes/autoscaler@cluster-autoscaler-1.33.6 cluster-autoscaler/cloudprovider/aws/aws_cloud_provider.go:L37-L38.
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# The Flagger release policy/engines.py emulates (every citation there is fluxcd/flagger@v1.44.0);
# infra/platform/pins.py must install the same (tests/test_pins.py).
EMULATED_FLAGGER_RELEASE = "1.44.0"


def _cluster_view(resources: list[Resource]) -> tuple[list[Resource], list[Resource]]:
    """(declared Kubernetes objects, those plus what Flagger generates), from the cache the engine
    rules share for one evaluation (policy/rules.py imports this module, hence the late import)."""
    from policy import rules

    objects, _ = rules._cluster_view(resources)
    return [r for r in objects if r.generated_by is None], objects


def _chart(release: Resource) -> str:
    return str(release.props.get("chart") or "").rsplit("/", 1)[-1]


def node_groups_ignore_the_autoscaler(resources: list[Resource], settings: object) -> list[tuple[Resource, str]]:
    """With the Cluster Autoscaler installed, every EKS managed node group ignores scaling changes.

    Without `ignoreScalingChanges`, pulumi-eks declares the aws.eks.NodeGroup with no ignoreChanges
    (pulumi/pulumi-eks@7bf0c1b nodejs/eks/nodes/nodegroup.ts:L2085-L2087, L2119), so every `pulumi up`
    sets `scalingConfig.desiredSize` back to the declared value over what the autoscaler chose, and
    a refreshed preview reports each scale-up as drift."""
    if not any(r.type == HELM_RELEASE and _chart(r) == "cluster-autoscaler" for r in resources):
        return []
    return [
        (group, "the Cluster Autoscaler sizes this node group, but ignoreScalingChanges is not true")
        for group in resources
        if group.type == EKS_NODE_GROUP and group.props.get("ignoreScalingChanges") is not True
    ]


def gpu_node_groups_carry_the_accelerator_label(resource: Resource, settings: object) -> list[str]:
    """A GPU node group labels its nodes `k8s.amazonaws.com/accelerator`: the autoscaler then counts
    a new node as a GPU node before the device plugin registers `nvidia.com/gpu` (utils/gpu/gpu.go:
    L101-L105) instead of scaling out again (cloudprovider/aws/README.md:L272-L286, "Special note on
    GPU instances"; kubernetes/autoscaler@cluster-autoscaler-1.33.6)."""
    if resource.type != EKS_NODE_GROUP:
        return []
    taints = resource.props.get("taints") or []
    gpu = resource.props.get("gpu") is True or any(t.get("key") == GPU_RESOURCE for t in taints)
    if gpu and not (resource.props.get("labels") or {}).get(ACCELERATOR_LABEL):
        return [f"GPU node group without the {ACCELERATOR_LABEL} label"]
    return []


def flagger_release_is_the_emulated_one(resource: Resource, settings: object) -> list[str]:
    """The Flagger chart installed is the release the engine emulation and the vendored CRDs are of."""
    if resource.type != HELM_RELEASE or _chart(resource) != "flagger":
        return []
    version = str(resource.props.get("version") or "")
    if version.lstrip("v") != EMULATED_FLAGGER_RELEASE:
        return [
            f"Flagger chart {version or '(unpinned)'}, but the checks emulate and the CRD schemas are of "
            f"fluxcd/flagger v{EMULATED_FLAGGER_RELEASE}"
        ]
    return []


def canaries_drive_their_own_traffic(resources: list[Resource], settings: object) -> list[tuple[Resource, str]]:
    """Every Canary's analysis sends predictions to its canary and checks each protocol it serves.

    Flagger counts a metric query without values as a failed check (fluxcd/flagger@v1.44.0
    pkg/controller/scheduler_metrics.go:L315-L324), so without traffic a good release rolls back;
    and its Gateway API router shifts HTTPRoutes only (pkg/router/gateway_api.go), so gRPC clients
    never reach the canary and a release broken only on gRPC is promoted unless a webhook checks
    it (a failed rollout webhook halts the step: pkg/controller/scheduler.go:L752-L762).
    """
    declared = [r for r in resources if is_kubernetes(r)]
    generated = {(r.namespace, r.object_name): r for r in flagger_outcome(declared).generated if r.kind == "Service"}
    problems = []
    for canary in (r for r in declared if r.type == CANARY):
        apex = str((canary.spec.get("service") or {}).get("name") or (canary.spec.get("targetRef") or {}).get("name"))
        service = generated.get((canary.namespace, f"{apex}-canary"))
        if service is None:
            continue  # references-resolve and service-isolation name why Flagger generates nothing
        ports = {p.get("name"): p.get("port") for p in service.spec.get("ports") or []}
        rollout_urls = {str(w.get("url")) for w in webhooks.rollout_webhooks(canary)}
        reached = [
            t
            for t in webhooks.targets(canary)
            if (t.namespace, t.service) == (canary.namespace, f"{apex}-canary")
            and any(
                t.field.startswith(f"analysis.webhooks.{w.get('name')}.") for w in webhooks.rollout_webhooks(canary)
            )
        ]
        if not rollout_urls or not any(t.tool == "hey" and t.port == ports.get("http") for t in reached):
            problems.append(
                (
                    canary,
                    f"{canary.describe()}: no rollout webhook sends REST predictions to {apex}-canary port "
                    f"{ports.get('http')}: an analysis without live traffic finds no metric values and rolls back",
                )
            )
        if "grpc" in ports and not any(
            t.tool == "ghz" and t.port == ports["grpc"] and t.call in webhooks.GRPC_CALLS for t in reached
        ):
            problems.append(
                (
                    canary,
                    f"{canary.describe()}: the canary serves gRPC on port {ports['grpc']}, but no rollout webhook "
                    f"checks {webhooks.GRPC_PREDICT} there; Flagger shifts HTTPRoutes only, so gRPC is never canaried",
                )
            )
    return problems


def _destination(service: Resource, port: int, pod: PodTemplate) -> Endpoint | None:
    """The pod's side of a connection to `service:port` (kube-proxy's DNAT to the targetPort)."""
    entry = next((p for p in service.spec.get("ports") or [] if p.get("port") == port), None)
    if entry is None:
        return None
    target = entry.get("targetPort", port)
    container_ports = [p for c in pod.spec.get("containers") or [] for p in c.get("ports") or []]
    if isinstance(target, str):
        number = next((p.get("containerPort") for p in container_ports if p.get("name") == target), None)
        name: str | None = target
    else:
        number = target
        name = next((p.get("name") for p in container_ports if p.get("containerPort") == target), None)
    where = f"{pod.owner.describe()}:{target}"
    return Endpoint(pod.owner.namespace, pod.labels, number, name, entry.get("protocol", "TCP"), where, pod)


def webhooks_reach_their_targets(resources: list[Resource], settings: object) -> list[tuple[Resource, str]]:
    """Through the NetworkPolicies (policy/netpol.py): Flagger reaches the Service each webhook URL
    names, and the pods behind it reach the Services its `hey`/`ghz` commands target. A default-deny
    namespace refuses anything not admitted on both sides, and a refused webhook call fails every
    analysis step (fluxcd/flagger@v1.44.0 pkg/controller/scheduler.go:L752-L762)."""
    declared, objects = _cluster_view(resources)
    canaries = [r for r in declared if r.type == CANARY]
    if not canaries:
        return []
    templates = pod_templates(objects)
    pods = LabelIndex((t.owner.namespace, t.labels, t) for t in templates)
    policies = PolicyIndex(objects, templates)
    services = {(r.namespace, r.object_name): r for r in objects if r.type == SERVICE}
    flagger_namespaces = [
        str(r.props.get("namespace")) for r in resources if r.type == HELM_RELEASE and _chart(r) == "flagger"
    ]

    def behind(service: Resource) -> list[PodTemplate]:
        selector = service.spec.get("selector") or {}
        return [t for t in pods.candidates([service.namespace], selector) if selects(selector, t.labels)]

    problems = []
    for canary in canaries:
        callers: dict[str, list[Endpoint]] = {}
        for target in webhooks.targets(canary):
            service = services.get((target.namespace, target.service))
            if service is None:
                continue  # references-resolve names it
            hook = target.field.split(".")[2]
            if target.tool == "webhook":
                sources = [Endpoint(ns, {}, description=f"Flagger (namespace {ns})") for ns in flagger_namespaces]
                callers[hook] = [
                    Endpoint(t.owner.namespace, t.labels, description=t.owner.describe(), template=t)
                    for t in behind(service)
                ]
            else:
                sources = callers.get(hook, [])
            for pod in behind(service):
                destination = _destination(service, target.port, pod)
                if destination is None:
                    continue  # references-resolve names the missing port
                for source in sources:
                    reason = blocked_by(policies, source, destination)
                    if reason:
                        problems.append((canary, f"{canary.describe()}: {target.field} ({target.tool}): {reason}"))
    return problems
