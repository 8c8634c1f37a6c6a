"""The guardrails, as plain functions over Kubernetes objects: used by the Pulumi policy pack
(`pulumi preview --policy-pack policy`, see `__main__.py`) and by `modelctl plan --policy`.

A rule gets an object as the program declares it (camelCase properties, as Pulumi's policy
SDK hands them over) and the stack's `PolicySettings`, and returns violation messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MANDATORY = "mandatory"
ADVISORY = "advisory"
MAX_CANARY_WEIGHT = 50
PRODUCTION_MIN_REPLICAS = 2
IMAGE = re.compile(
    r"^(?P<repository>[^@:]+(?::[0-9]+)?(?:/[^@:]+)*)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
EXACT_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][A-Za-z0-9_.-]+)?$")
FETCH_ARG = re.compile(r"^[1-9][0-9]*=sha256:[0-9a-f]{64}$")
POD_OWNERS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:DaemonSet")


@dataclass(frozen=True)
class PolicySettings:
    """What a stack asks of the policies (policy-pack config; derived from the stack offline)."""

    require_digest: bool = False
    production: bool = False
    host: str | None = None


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[Resource, PolicySettings], list[str]] | None = None
    check_stack: Callable[[list[Resource], PolicySettings], list[tuple[Resource, str]]] | None = None
    enforcement: Callable[[PolicySettings], str] = field(default=lambda settings: MANDATORY)


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
    if resource.type != "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute":
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
        for argument in container.get("args") or []:
            if not FETCH_ARG.match(argument):
                problems.append(f"served version {argument!r} carries no sha256 digest")
    return problems


def routes_on_stack_host(resource: Resource, settings: PolicySettings) -> list[str]:
    if settings.host is None:
        return []
    spec = resource.props.get("spec") or {}
    hosts: list[str] = []
    if resource.type == "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute":
        hosts = list(spec.get("hostnames") or ["*"])
    elif resource.type == "kubernetes:networking.k8s.io/v1:Ingress":
        hosts = [rule.get("host", "*") for rule in spec.get("rules") or []]
    elif resource.type == "kubernetes:gateway.networking.k8s.io/v1:Gateway":
        hosts = [listener.get("hostname", "*") for listener in spec.get("listeners") or []]
    elif resource.type == "kubernetes:flagger.app/v1beta1:Canary":
        hosts = list((spec.get("service") or {}).get("hosts") or [])
    return [
        f"routes host {host!r}; this stack serves only {settings.host!r}" for host in hosts if host != settings.host
    ]


def production_replicas(resources: list[Resource], settings: PolicySettings) -> list[tuple[Resource, str]]:
    """In production: at least two replicas (HPA minimum), and a PodDisruptionBudget per workload."""
    if not settings.production:
        return []
    problems = []
    budgets = [r for r in resources if r.type == "kubernetes:policy/v1:PodDisruptionBudget"]
    for scaler in (r for r in resources if r.type == "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"):
        minimum = scaler.props.get("spec", {}).get("minReplicas", 1)
        if minimum < PRODUCTION_MIN_REPLICAS:
            problems.append((scaler, f"minReplicas {minimum} < {PRODUCTION_MIN_REPLICAS} in production"))
    for workload in (r for r in resources if r.type in POD_OWNERS):
        replicas = workload.props.get("spec", {}).get("replicas")
        if replicas is not None and replicas < PRODUCTION_MIN_REPLICAS:
            problems.append((workload, f"replicas {replicas} < {PRODUCTION_MIN_REPLICAS} in production"))
        labels = ((workload.props.get("spec", {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        covered = any(
            budget.props.get("metadata", {}).get("namespace") == workload.props.get("metadata", {}).get("namespace")
            and (budget.props.get("spec", {}).get("selector") or {}).get("matchLabels", {}).items() <= labels.items()
            for budget in budgets
        )
        if not covered:
            problems.append((workload, "no PodDisruptionBudget selects its pods in production"))
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
)


@dataclass(frozen=True)
class Violation:
    rule: str
    enforcement: str
    resource: Resource
    message: str

    def __str__(self) -> str:
        return f"[{self.enforcement}] {self.rule}: {self.resource.type} {self.resource.name}: {self.message}"


def evaluate(resources: list[Resource], settings: PolicySettings) -> list[Violation]:
    """Every rule over every resource; mandatory violations fail a plan."""
    violations = []
    for rule in RULES:
        level = rule.enforcement(settings)
        if rule.check is not None:
            for resource in resources:
                violations += [Violation(rule.name, level, resource, m) for m in rule.check(resource, settings)]
        if rule.check_stack is not None:
            violations += [Violation(rule.name, level, r, m) for r, m in rule.check_stack(resources, settings)]
    return violations
