"""The guardrails, as plain functions over declared resources: used by the Pulumi policy pack
(`pulumi preview --policy-pack policy`, see `__main__.py`) and by every `modelctl plan`.

A rule gets an object as the program declares it (camelCase properties, as Pulumi's policy
SDK hands them over) and the stack's `PolicySettings`, and returns violation messages. The
engine rules (explicit-providers, service-isolation, references-resolve, pods-schedule)
emulate what Pulumi, Flagger and the scheduler would do with the objects (engines.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policy import fidelity, keda, mirrors, webhooks
from policy.engines import (
    DEPLOYMENT,
    GRPC_ROUTE,
    HTTP_ROUTE,
    POOL_LABEL,
    SCALED_OBJECT,
    SERVICE,
    LabelIndex,
    NodePool,
    Pod,
    PodTemplate,
    Resource,
    admits,
    flagger_outcome,
    hashable,
    is_kubernetes,
    label_selector_matches,
    place,
    pod_request,
    pod_templates,
    selects,
)

MANDATORY = "mandatory"
ADVISORY = "advisory"
MAX_CANARY_WEIGHT = 50
PRODUCTION_MIN_REPLICAS = 2
IMAGE = re.compile(
    r"^(?P<repository>[^@:]+(?::[0-9]+)?(?:/[^@:]+)*)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
EXACT_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][A-Za-z0-9_.-]+)?$")
# `VERSION=DIGEST` (a model's fetcher), `MODEL@VERSION=DIGEST` (a serving pool's, after the path
# of its member list; infra/model/pool.py fetch_args).
FETCH_ARG = re.compile(r"^([a-z]([-a-z0-9]*[a-z0-9])?@)?[1-9][0-9]*=sha256:[0-9a-f]{64}$")
POOL_FETCH_LIST = "/etc/tfserving/fetch.list"
POD_OWNERS = (DEPLOYMENT, "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")


@dataclass(frozen=True)
class ExternalObject:
    """A prerequisite the stack does not declare but expects in the cluster (a TLS Secret)."""

    kind: str
    name: str
    namespace: str = ""  # empty for cluster-scoped kinds


@dataclass(frozen=True)
class PolicySettings:
    """What a stack asks of the policies (policy-pack config; derived from the stack offline)."""

    require_digest: bool = False
    production: bool = False
    host: str | None = None
    # `pulumi:disable-default-providers` of the stack ("*": every package).
    disabled_default_providers: tuple[str, ...] = ()
    external: tuple[ExternalObject, ...] = ()
    # Where pods may run; empty: unknown (an existing cluster that lists no node pools).
    node_pools: tuple[NodePool, ...] = ()


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[Resource, PolicySettings], list[str]] | None = None
    check_stack: Callable[[list[Resource], PolicySettings], list[tuple[Resource, str]]] | None = None
    enforcement: Callable[[PolicySettings], str] = field(default=lambda settings: MANDATORY)
    fix: str = ""


def pod_spec(resource: Resource) -> Mapping[str, Any] | None:
    if resource.type in POD_OWNERS:
        return resource.props.get("spec", {}).get("template", {}).get("spec", {})
    return None


def containers(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def images_pinned(resource: Resource, settings: PolicySettings) -> list[str]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    problems = []
    for container in containers(spec):
        image = container.get("image", "")
        match = IMAGE.match(image)
        if not match:
            problems.append(f"container {container.get('name')}: image {image!r} is not a valid reference")
        elif match["digest"] is None and not (match["tag"] and EXACT_VERSION.match(match["tag"])):
            problems.append(f"container {container.get('name')}: image {image!r} is not pinned to an exact version")
    return problems


def images_by_digest(resource: Resource, settings: PolicySettings) -> list[str]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    return [
        f"container {c.get('name')}: image {c.get('image')!r} is not pinned by digest (@sha256:...)"
        for c in containers(spec)
        if "@sha256:" not in c.get("image", "")
    ]


def requests_and_limits(resource: Resource, settings: PolicySettings) -> list[str]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    problems = []
    for container in containers(spec):
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(kind) or {})]
            if missing:
                problems.append(f"container {container.get('name')}: no {kind} for {', '.join(missing)}")
    return problems


def restricted_pod_security(resource: Resource, settings: PolicySettings) -> list[str]:
    """The Kubernetes `restricted` Pod Security Standard, plus a read-only root filesystem."""
    spec = pod_spec(resource)
    if spec is None:
        return []
    problems = []
    pod = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"pod uses {host}")
    if any("hostPath" in volume for volume in spec.get("volumes") or []):
        problems.append("pod mounts a hostPath volume")
    for container in containers(spec):
        context = container.get("securityContext") or {}
        name = container.get("name")
        if not (context.get("runAsNonRoot") or pod.get("runAsNonRoot")):
            problems.append(f"container {name}: runAsNonRoot is not set")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation must be false")
        if context.get("privileged"):
            problems.append(f"container {name}: privileged")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append(f"container {name}: capabilities must drop ALL")
        seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name}: seccompProfile must be RuntimeDefault")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name}: readOnlyRootFilesystem must be true")
    return problems


def canary_weight(resource: Resource, settings: PolicySettings) -> list[str]:
    if resource.type not in (HTTP_ROUTE, GRPC_ROUTE):
        return []
    problems = []
    for rule in resource.props.get("spec", {}).get("rules") or []:
        backends = rule.get("backendRefs") or []
        if len(backends) < 2:
            continue
        total = sum(b.get("weight", 1) for b in backends)
        for backend in backends[1:]:
            share = 100 * backend.get("weight", 1) / total if total else 0
            if share > MAX_CANARY_WEIGHT:
                problems.append(
                    f"backend {backend.get('name')} gets {share:g}% of the traffic (at most {MAX_CANARY_WEIGHT})"
                )
    return problems


def served_versions_have_digest(resource: Resource, settings: PolicySettings) -> list[str]:
    spec = pod_spec(resource)
    if spec is None:
        return []
    problems = []
    for container in spec.get("initContainers") or []:
        if container.get("name") != "fetch-models":
            continue
        arguments = list(container.get("args") or [])
        if arguments[:1] == [POOL_FETCH_LIST]:
            arguments = arguments[1:]
        for argument in arguments:
            if not FETCH_ARG.match(argument):
                problems.append(f"served version {argument!r} carries no sha256 digest")
    return problems


def routes_on_stack_host(resource: Resource, settings: PolicySettings) -> list[str]:
    if settings.host is None:
        return []
    spec = resource.props.get("spec") or {}
    hosts: list[str] = []
    if resource.type in (HTTP_ROUTE, GRPC_ROUTE):
        hosts = list(spec.get("hostnames") or ["*"])
    elif resource.type == "kubernetes:networking.k8s.io/v1:Ingress":
        hosts = [rule.get("host", "*") for rule in spec.get("rules") or []]
    elif resource.type == "kubernetes:gateway.networking.k8s.io/v1:Gateway":
        hosts = [listener.get("hostname", "*") for listener in spec.get("listeners") or []]
    elif resource.type == "kubernetes:flagger.app/v1beta1:Canary":
        hosts = list((spec.get("service") or {}).get("hosts") or [])
    # gRPC has one name per model under `grpc.<host>` (infra/model/routing.py grpc_route says why).
    grpc_domain = f".grpc.{settings.host}"
    return [
        f"routes host {host!r}; this stack serves only {settings.host!r} (and <model>{grpc_domain} for gRPC)"
        for host in hosts
        if host != settings.host and not (host.endswith(grpc_domain) and "." not in host[: -len(grpc_domain)])
    ]


def production_replicas(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """In production: at least two replicas (HPA or KEDA ScaledObject minimum), and a
    PodDisruptionBudget per workload."""
    if not settings.production:
        return []
    problems = []
    budgets = _BudgetIndex(r for r in resources if r.type == "kubernetes:policy/v1:PodDisruptionBudget")
    for scaler in (r for r in resources if r.type == "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"):
        minimum = scaler.props.get("spec", {}).get("minReplicas", 1)
        if minimum < PRODUCTION_MIN_REPLICAS:
            problems.append((scaler, f"minReplicas {minimum} < {PRODUCTION_MIN_REPLICAS} in production"))
    for scaler in (r for r in resources if r.type == SCALED_OBJECT):
        minimum, _ = keda.replica_bounds(scaler)
        if minimum < PRODUCTION_MIN_REPLICAS:
            problems.append((scaler, f"minReplicaCount {minimum} < {PRODUCTION_MIN_REPLICAS} in production"))
    for workload in (r for r in resources if r.type in POD_OWNERS):
        replicas = workload.props.get("spec", {}).get("replicas")
        if replicas is not None and replicas < PRODUCTION_MIN_REPLICAS:
            problems.append((workload, f"replicas {replicas} < {PRODUCTION_MIN_REPLICAS} in production"))
        labels = ((workload.props.get("spec", {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        covered = any(
            budget.props.get("metadata", {}).get("namespace") == workload.props.get("metadata", {}).get("namespace")
            and (budget.props.get("spec", {}).get("selector") or {}).get("matchLabels", {}).items() <= labels.items()
            for budget in budgets.candidates(labels)
        )
        if not covered:
            problems.append((workload, "no PodDisruptionBudget selects its pods in production"))
    return problems


class _BudgetIndex:
    """PodDisruptionBudgets by one label of their selector, the rarest among the budgets: a
    workload's candidates are the budgets filed under one of its labels (plus those selecting
    by no label), a superset of those that select it, instead of every budget per workload."""

    def __init__(self, budgets: Iterable[Resource]):
        budgets = list(budgets)
        selectors = [self._match_labels(b) for b in budgets]
        frequency: dict[tuple[str, Any], int] = {}
        for selector in selectors:
            for item in selector.items():
                frequency[item] = frequency.get(item, 0) + 1
        self._unfiled: list[int] = []
        self._by_label: dict[tuple[str, Any], list[int]] = {}
        self._budgets = budgets
        for position, selector in enumerate(selectors):
            if selector:
                rarest = min(selector.items(), key=lambda item: (frequency[item], item[0]))
                self._by_label.setdefault(rarest, []).append(position)
            else:
                self._unfiled.append(position)

    @staticmethod
    def _match_labels(budget: Resource) -> dict[str, Any]:
        labels = (budget.props.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        # A value that cannot be filed leaves the budget for the exact check of every workload.
        return labels if all(hashable(v) for v in labels.values()) else {}

    def candidates(self, labels: Mapping[str, Any]) -> list[Resource]:
        positions = list(self._unfiled)
        for item in labels.items():
            if hashable(item[1]):
                positions += self._by_label.get(item, [])
        return [self._budgets[p] for p in sorted(set(positions))]


# Engine emulation -----------------------------------------------------------------------------


def explicit_providers(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """With default providers disabled, the engine refuses a custom resource or a remote
    component whose registration names no provider of its package, with exactly this message
    (pulumi/pulumi pkg/resource/deploy/source_eval.go, resmon.RegisterResource; asserted in
    source_eval_test.go; seen by users of pulumi-eks in pulumi/pulumi-eks#917)."""
    disabled = set(settings.disabled_default_providers)
    problems = []
    for resource in resources:
        package = resource.engine_package
        if package is None or resource.type.startswith("pulumi:providers:"):
            continue
        if ("*" in disabled or package in disabled) and package not in resource.explicit_providers:
            problems.append(
                (
                    resource,
                    f"Default provider for '{package}' disabled. '{resource.type}' must use an explicit provider.",
                )
            )
    return problems


# The last cluster view, by the very list it was made from: three rules of one evaluation ask
# for it, and a fleet's Flagger emulation is worth doing once. The list is held, so its
# identity cannot be reused; the rules never change the list they are given.
_last_view: list[tuple[list[Resource], tuple[list[Resource], Any]]] = []


def _cluster_view(resources: list[Resource]) -> tuple[list[Resource], Any]:
    """Declared Kubernetes objects plus what Flagger generates from the Canaries."""
    if _last_view and _last_view[0][0] is resources:
        return _last_view[0][1]
    declared = [r for r in resources if is_kubernetes(r)]
    outcome = flagger_outcome(declared)
    view = (declared + outcome.generated, outcome)
    _last_view[:] = [(resources, view)]
    return view


def service_isolation(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """Every Service, declared or generated by Flagger, selects the pods of one workload: one
    model's (its model label, whatever the track) or one serving-pool shard's (its pool label),
    never several; and a pool's Service (labelled with its shard) selects only that shard's pods."""
    objects, outcome = _cluster_view(resources)
    pods = LabelIndex((pod.owner.namespace, pod.labels, pod) for pod in pod_templates(objects))
    problems = list(outcome.refusals)
    for service in (r for r in objects if r.type == SERVICE):
        selector = service.spec.get("selector")
        selected = [
            pod
            for pod in (pods.candidates([service.namespace], selector) if selector else [])
            if selects(selector, pod.labels)
        ]
        workloads = sorted({pod.workload for pod in selected})
        if len(workloads) > 1:
            problems.append(
                (
                    service.reported,
                    f"{service.describe()} selects the pods of {len(workloads)} workloads: {', '.join(workloads)}",
                )
            )
        pool = (service.metadata.get("labels") or {}).get(POOL_LABEL)
        strays = sorted({pod.workload for pod in selected if pod.labels.get(POOL_LABEL) != pool}) if pool else []
        if strays:
            problems.append(
                (
                    service.reported,
                    f"{service.describe()} is the Service of pool {pool} but selects the pods of {', '.join(strays)}",
                )
            )
    return problems


CLUSTER_SCOPED = ("GatewayClass", "IngressClass", "Namespace", "ClusterRole", "StorageClass")


class _Index:
    """Names the cluster will hold: declared and generated objects, Helm-created namespaces,
    and the stack's external prerequisites."""

    def __init__(self, objects: list[Resource], resources: list[Resource], external: tuple[ExternalObject, ...]):
        self.names: set[tuple[str, str, str]] = set()
        self.objects = objects
        self._by_kind: dict[tuple[str, str, str], Resource] = {}
        for resource in objects:
            namespace = "" if resource.kind in CLUSTER_SCOPED else resource.namespace
            self.names.add((resource.kind, namespace, resource.object_name))
            self._by_kind.setdefault((resource.kind, resource.namespace, resource.object_name), resource)
        self.services = LabelIndex(
            (s.namespace, s.metadata.get("labels") or {}, s) for s in objects if s.type == SERVICE
        )
        for release in (r for r in resources if r.type.startswith("kubernetes:helm.sh/")):
            if release.props.get("createNamespace") and release.props.get("namespace"):
                self.names.add(("Namespace", "", str(release.props["namespace"])))
        self.external = {(e.kind, "" if e.kind in CLUSTER_SCOPED else e.namespace, e.name) for e in external}

    def has(self, kind: str, namespace: str, name: str) -> bool:
        key = (kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        return key in self.names or key in self.external

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        return self._by_kind.get((kind, namespace, name))


def _pod_references(spec: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
    """(field, kind, name) of every non-optional object a pod spec names."""
    for volume in spec.get("volumes") or []:
        if "configMap" in volume and not volume["configMap"].get("optional"):
            yield f"volumes.{volume.get('name')}", "ConfigMap", volume["configMap"].get("name", "")
        if "secret" in volume and not volume["secret"].get("optional"):
            yield f"volumes.{volume.get('name')}", "Secret", volume["secret"].get("secretName", "")
    for container in containers(spec):
        for source in container.get("envFrom") or []:
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source and not source[key].get("optional"):
                    yield f"containers.{container.get('name')}.envFrom", kind, source[key].get("name", "")
        for variable in container.get("env") or []:
            value_from = variable.get("valueFrom") or {}
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if key in value_from and not value_from[key].get("optional"):
                    yield (
                        f"containers.{container.get('name')}.env.{variable.get('name')}",
                        kind,
                        value_from[key]["name"],
                    )
    account = spec.get("serviceAccountName")
    if account and account != "default":
        yield "serviceAccountName", "ServiceAccount", account


def _references(resource: Resource) -> Iterable[tuple[str, str, str, str]]:
    """(field, kind, namespace, name) of every object `resource` names."""
    spec, namespace = resource.spec, resource.namespace
    if namespace:
        yield "metadata.namespace", "Namespace", "", namespace
    if resource.kind == "Gateway":
        yield "spec.gatewayClassName", "GatewayClass", "", spec.get("gatewayClassName", "")
        for listener in spec.get("listeners") or []:
            for ref in (listener.get("tls") or {}).get("certificateRefs") or []:
                yield (
                    f"listeners.{listener.get('name')}.tls",
                    ref.get("kind", "Secret"),
                    ref.get("namespace", namespace),
                    ref.get("name", ""),
                )
    elif resource.kind in ("HTTPRoute", "GRPCRoute"):
        for ref in spec.get("parentRefs") or []:
            yield "spec.parentRefs", ref.get("kind", "Gateway"), ref.get("namespace", namespace), ref.get("name", "")
        for rule in spec.get("rules") or []:
            for field_path, ref in route_backends(rule):
                yield field_path, ref.get("kind", "Service"), ref.get("namespace", namespace), ref["name"]
    elif resource.kind == "Ingress":
        if spec.get("ingressClassName"):
            yield "spec.ingressClassName", "IngressClass", "", spec["ingressClassName"]
        for tls in spec.get("tls") or []:
            if tls.get("secretName"):
                yield "spec.tls", "Secret", namespace, tls["secretName"]
        for rule in spec.get("rules") or []:
            for path in (rule.get("http") or {}).get("paths") or []:
                service = (path.get("backend") or {}).get("service") or {}
                if service:
                    yield "spec.rules.backend", "Service", namespace, service.get("name", "")
    elif resource.kind == "HorizontalPodAutoscaler":
        target = spec.get("scaleTargetRef") or {}
        yield "spec.scaleTargetRef", target.get("kind", ""), namespace, target.get("name", "")
    elif resource.type == SCALED_OBJECT:
        # An empty kind is a Deployment (policy/keda.py target).
        target = spec.get("scaleTargetRef") or {}
        yield "spec.scaleTargetRef", target.get("kind") or "Deployment", namespace, target.get("name", "")
    elif resource.kind == "Canary":
        yield "spec.targetRef", (spec.get("targetRef") or {}).get("kind", ""), namespace, spec["targetRef"]["name"]
        if spec.get("autoscalerRef"):
            ref = spec["autoscalerRef"]
            yield "spec.autoscalerRef", ref.get("kind", ""), namespace, ref.get("name", "")
        for metric in (spec.get("analysis") or {}).get("metrics") or []:
            ref = metric.get("templateRef")
            if ref:
                yield (
                    f"analysis.metrics.{metric.get('name')}",
                    "MetricTemplate",
                    ref.get("namespace", namespace),
                    ref["name"],
                )
        for ref in (spec.get("service") or {}).get("gatewayRefs") or []:
            yield "spec.service.gatewayRefs", "Gateway", ref.get("namespace", namespace), ref.get("name", "")
    elif resource.type in POD_OWNERS:
        pod = (spec.get("template") or {}).get("spec") or {}
        for field_path, kind, name in _pod_references(pod):
            yield f"spec.template.spec.{field_path}", kind, namespace, name


def route_backends(rule: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(field path, backendRef) of every Service a route rule sends requests to: its backendRefs,
    and the backendRef of each RequestMirror filter (a shadow's Service, docs/shadow.md), which
    Envoy Gateway resolves as it resolves a backendRef (envoyproxy/gateway@v1.9.0
    internal/gatewayapi/filters.go:1091-1099)."""
    for ref in rule.get("backendRefs") or []:
        yield "spec.rules.backendRefs", ref
    for f in rule.get("filters") or []:
        mirror = (f.get("requestMirror") or {}).get("backendRef") if f.get("type") == "RequestMirror" else None
        if mirror:
            yield "spec.rules.filters.requestMirror.backendRef", mirror


def _port_problems(resource: Resource, index: _Index) -> Iterable[str]:
    """Ports and listeners that references name: a route's backend port, a ServiceMonitor's
    endpoint port, an HTTPRoute's sectionName."""
    if resource.kind in ("HTTPRoute", "GRPCRoute"):
        for ref in resource.spec.get("parentRefs") or []:
            gateway = index.get("Gateway", ref.get("namespace", resource.namespace), ref.get("name", ""))
            listeners = {
                listener.get("name"): listener for listener in (gateway.spec if gateway else {}).get("listeners") or []
            }
            if gateway is not None and ref.get("sectionName") and ref["sectionName"] not in listeners:
                names = list(listeners)
                yield f"spec.parentRefs names listener {ref['sectionName']!r}; {gateway.describe()} has {names}"
                continue
            listener = listeners.get(ref.get("sectionName"))
            allowed = [k.get("kind") for k in ((listener or {}).get("allowedRoutes") or {}).get("kinds") or []]
            if gateway is not None and allowed and resource.kind not in allowed:
                # The Gateway refuses the attachment (Route condition Accepted=False, NotAllowedByListeners).
                yield f"spec.parentRefs: listener {ref['sectionName']!r} of {gateway.describe()} admits only {allowed}"
        for rule in resource.spec.get("rules") or []:
            for field_path, ref in route_backends(rule):
                service = index.get("Service", ref.get("namespace", resource.namespace), ref["name"])
                ports = [p.get("port") for p in (service.spec.get("ports") if service else []) or []]
                if service is not None and ref.get("port") not in ports:
                    yield f"{field_path}: {service.describe()} has no port {ref.get('port')} (ports {ports})"
    elif resource.kind == "Ingress":
        for rule in resource.spec.get("rules") or []:
            for path in (rule.get("http") or {}).get("paths") or []:
                backend = (path.get("backend") or {}).get("service") or {}
                service = index.get("Service", resource.namespace, backend.get("name", ""))
                port = backend.get("port") or {}
                names = [p.get("name") for p in (service.spec.get("ports") if service else []) or []]
                numbers = [p.get("port") for p in (service.spec.get("ports") if service else []) or []]
                if service is not None and port.get("name") not in names and port.get("number") not in numbers:
                    yield f"spec.rules.backend: {service.describe()} has no port {port}"
    elif resource.kind == "ServiceMonitor":
        namespaces = (resource.spec.get("namespaceSelector") or {}).get("matchNames") or [resource.namespace]
        selector = resource.spec.get("selector")
        services = [
            s
            for s in index.services.candidates(namespaces, (selector or {}).get("matchLabels") or {})
            if label_selector_matches(selector, s.metadata.get("labels") or {})
        ]
        if not services:
            yield "spec.selector selects no Service: nothing is scraped"
        for endpoint in resource.spec.get("endpoints") or []:
            named = [s for s in services if endpoint.get("port") in [p.get("name") for p in s.spec.get("ports") or []]]
            if services and not named:
                yield f"spec.endpoints: no selected Service has a port named {endpoint.get('port')!r}"


def references_resolve(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """Every reference between declared objects resolves, or names an external prerequisite."""
    objects, _ = _cluster_view(resources)
    index = _Index(objects, resources, settings.external)
    problems = []
    for resource in objects:
        if resource.generated_by is not None:
            continue  # Flagger's objects reference what their Canary's target does
        for field_path, kind, namespace, name in _references(resource):
            if not index.has(kind, namespace, name):
                where = f"{namespace}/{name}" if namespace and kind not in CLUSTER_SCOPED else name
                problems.append(
                    (
                        resource.reported,
                        f"{resource.describe()}: {field_path} names {kind} {where}, which the stack neither declares "
                        "nor lists as external",
                    )
                )
        problems += [(resource.reported, f"{resource.describe()}: {text}") for text in _port_problems(resource, index)]
        if resource.kind == "Canary":  # webhook URLs and the load tester's targets (policy/webhooks.py)
            problems += [
                (resource, f"{resource.describe()}: {text}") for text in webhooks.problems(resource, index.get)
            ]
    return problems


def pods_schedule(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """Every pod fits a node of a pool it may run on, and every workload's minimum replicas fit
    the pools together (first-fit decreasing). A Flagger target runs next to its primary
    during an analysis, so both count."""
    pools = settings.node_pools
    if not pools:
        return []
    objects, _ = _cluster_view(resources)
    problems = []
    pending: list[Pod] = []
    templates: dict[str, PodTemplate] = {}
    for template in pod_templates(objects):
        owner = template.owner
        request = pod_request(template.spec)
        eligible = [pool for pool in pools if admits(pool, template.spec)]
        shape = f"{request.cpu_millis}m CPU, {request.memory_bytes // 2**20}Mi memory, {request.gpus} GPU"
        if not eligible:
            problems.append(
                (
                    owner.reported,
                    f"{owner.describe()}: no node pool admits its pods ({shape}); node selector "
                    f"{dict(template.spec.get('nodeSelector') or {})}, pools {', '.join(p.name for p in pools)}",
                )
            )
        elif not any(request.fits(pool) for pool in eligible):
            largest = ", ".join(
                f"{p.name}: {p.cpu_millis}m CPU, {p.memory_bytes // 2**20}Mi, {p.gpus} GPU" for p in eligible
            )
            problems.append(
                (owner.reported, f"{owner.describe()}: one pod requests {shape}; a node allocates at most ({largest})")
            )
        else:
            templates[owner.describe()] = template
            pending += [Pod(request, template.spec, owner.describe())] * template.min_replicas
    unplaced: dict[str, int] = {}
    for pod in place(pending, pools):
        unplaced[pod.owner] = unplaced.get(pod.owner, 0) + 1
    for key, count in unplaced.items():
        template = templates[key]
        capacity = "; ".join(
            f"pool {p.name}: {p.nodes} node(s) "
            + ("(max size, autoscaled)" if p.autoscaled else "(desired size; no node autoscaler)")
            for p in pools
            if admits(p, template.spec)
        )
        problems.append(
            (
                template.owner.reported,
                f"{key}: {count} of its {template.min_replicas} pods at minimum replicas fit on no node ({capacity})",
            )
        )
    return problems


RULES = (
    Rule("images-pinned", "Images are pinned to an exact version or a digest, never a floating tag.", images_pinned),
    Rule(
        "images-by-digest",
        "Images are pinned by digest (mandatory where the stack requires digests, advisory elsewhere).",
        images_by_digest,
        enforcement=lambda settings: MANDATORY if settings.require_digest else ADVISORY,
    ),
    Rule("requests-and-limits", "Every container sets CPU and memory requests and limits.", requests_and_limits),
    Rule("restricted-pod-security", "Pods meet the restricted Pod Security Standard.", restricted_pod_security),
    Rule(
        "production-replicas",
        "Production workloads run at least two replicas under a PodDisruptionBudget.",
        check_stack=production_replicas,
    ),
    Rule("canary-weight", f"A canary gets at most {MAX_CANARY_WEIGHT}% of a route's traffic.", canary_weight),
    Rule("served-versions-have-digest", "Every served model version carries its digest.", served_versions_have_digest),
    Rule("routes-on-stack-host", "Routes serve only the stack's host.", routes_on_stack_host),
    Rule(
        "explicit-providers",
        "With default providers disabled, every resource and remote component names its package's provider.",
        check_stack=explicit_providers,
        fix="pass the package's provider: `provider=` on a resource, `providers={package: ...}` on a component",
    ),
    Rule(
        "service-isolation",
        "Every Service, declared or generated by Flagger, selects the pods of one workload: one model's or "
        "one serving-pool shard's, and a pool's Service only its own shard's.",
        check_stack=service_isolation,
        fix="select pods by a label unique to the workload (the model's, or the pool shard's), first among "
        "Flagger's selector labels (app, name, app.kubernetes.io/name)",
    ),
    Rule(
        "references-resolve",
        "Every reference between objects resolves to a declared object or an external prerequisite.",
        check_stack=references_resolve,
        fix="declare the object, correct the name, or list it under `model-serving:external` in the stack file",
    ),
    Rule(
        "pods-schedule",
        "Every pod fits a node of a pool it may run on, and minimum replicas fit the pools.",
        check_stack=pods_schedule,
        fix="lower the requests or minimum replicas, or choose larger or more nodes (cluster.eks.*Nodes, "
        "cluster.nodePools) or a node autoscaler",
    ),
    Rule(
        "one-autoscaler-per-workload",
        "No workload is scaled by a HorizontalPodAutoscaler and a KEDA ScaledObject, or by two ScaledObjects "
        "(KEDA's admission webhook refuses the ScaledObject).",
        check_stack=keda.autoscaler_conflicts,
        fix="declare either the HPA (autoscaling.metric: cpu) or the ScaledObject (metric: requests), not both",
    ),
    Rule(
        "mirrors-take-no-client-traffic",
        "A route's RequestMirror target (a shadow's Service) is no route's backend, and no rule both mirrors "
        "and redirects (Envoy Gateway refuses it).",
        check_stack=mirrors.mirrors_take_no_client_traffic,
        fix="mirror to the model's `<model>-shadow` Service only (environments.<env>.shadow, docs/shadow.md)",
    ),
    # Findings of issue 24, with their upstream sources in policy/fidelity.py.
    Rule(
        "node-groups-ignore-the-autoscaler",
        "EKS node groups the Cluster Autoscaler sizes ignore scaling changes.",
        check_stack=fidelity.node_groups_ignore_the_autoscaler,
        fix="pass ignore_scaling_changes=True to eks.ManagedNodeGroup",
    ),
    Rule(
        "gpu-nodes-accelerator-label",
        "GPU node groups carry k8s.amazonaws.com/accelerator.",
        fidelity.gpu_node_groups_carry_the_accelerator_label,
        fix="label the group's nodes with the GPU's name (infra/spec/instances.py ACCELERATORS)",
    ),
    Rule(
        "flagger-release-emulated",
        "The Flagger chart is the release the checks emulate and the CRD schemas are of.",
        fidelity.flagger_release_is_the_emulated_one,
        fix="pin the chart in infra/platform/pins.py to that release, or move the emulation and vendored CRDs",
    ),
    Rule(
        "canary-drives-traffic",
        "Every Canary's rollout webhooks send REST predictions to its canary and check gRPC Predict there.",
        check_stack=fidelity.canaries_drive_their_own_traffic,
        fix="declare the load tester and the webhooks (infra/model/loadtest.py)",
    ),
    Rule(
        "webhooks-reachable",
        "NetworkPolicies let Flagger call each webhook and the load tester reach each canary it targets.",
        check_stack=fidelity.webhooks_reach_their_targets,
        fix="admit Flagger's namespace into the load tester, and the load tester into the models' serving ports",
    ),
)


@dataclass(frozen=True)
class Violation:
    rule: str
    enforcement: str
    resource: Resource
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"[{self.enforcement}] {self.rule}: {self.resource.type} {self.resource.name}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


def evaluate(resources: list[Resource], settings: PolicySettings) -> list[Violation]:
    """Every rule over every resource; mandatory violations fail a plan."""
    violations = []
    for rule in RULES:
        level = rule.enforcement(settings)
        if rule.check is not None:
            for resource in resources:
                violations += [
                    Violation(rule.name, level, resource, m, rule.fix) for m in rule.check(resource, settings)
                ]
        if rule.check_stack is not None:
            violations += [
                Violation(rule.name, level, r, m, rule.fix) for r, m in rule.check_stack(resources, settings)
            ]
    return violations
