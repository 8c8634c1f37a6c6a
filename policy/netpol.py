"""Whether NetworkPolicies let one pod connect to another on a port, as a policy-enforcing CNI
decides it (networking.k8s.io/v1): used to check that Flagger reaches the load tester and the
load tester reaches each canary, through the default-deny of the models' namespace.

Semantics from k8s.io/api networking/v1 types.go and kubernetes/website
content/en/docs/concepts/services-networking/network-policies.md: a pod selected by no policy of
a direction is open in that direction; once selected, a connection must match a rule of some
policy that selects it (policies add up). In a rule, an empty `from`/`to` matches every peer and
empty `ports` every port; a peer with only `podSelector` means pods of the policy's namespace,
with only `namespaceSelector` every pod of the selected namespaces, with both the selected pods
of those namespaces; an empty selector (`{}`) selects all. The API server labels every namespace
`kubernetes.io/metadata.name: <name>`. `ipBlock` is for addresses outside the cluster: a pod-to-pod
connection is not matched by it here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policy.engines import LabelIndex, PodTemplate, Resource, label_selector_matches

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod's namespace and labels; for the destination, the port
    as a number and, when the container names it, by name."""

    namespace: str
    labels: Mapping[str, str]
    port: int | None = None
    port_name: str | None = None
    protocol: str = "TCP"
    description: str = field(default="", compare=False)
    template: PodTemplate | None = field(default=None, compare=False)  # the declared pods, when known


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    # In a NetworkPolicy an empty selector selects everything (unlike a Service's).
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return True
    return label_selector_matches(selector, labels)


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return False
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = other.namespace == policy_namespace
    else:
        in_namespace = _selects(namespaces, {NAMESPACE_NAME_LABEL: other.namespace})
    pods = peer.get("podSelector")
    return in_namespace and (pods is None or _selects(pods, other.labels))


def _port_matches(ports: Iterable[Mapping[str, Any]] | None, destination: Endpoint) -> bool:
    ports = list(ports or [])
    if not ports:
        return True
    for port in ports:
        if port.get("protocol", "TCP") != destination.protocol:
            continue
        value = port.get("port")
        if value is None:
            return True
        if isinstance(value, int) and destination.port is not None:
            if value <= destination.port <= port.get("endPort", value):
                return True
        elif value == destination.port_name:
            return True
    return False


def _types(policy: Resource) -> list[str]:
    declared = policy.spec.get("policyTypes")
    if declared:
        return list(declared)
    # Without policyTypes: Ingress always, Egress when egress rules are present (types.go).
    return ["Ingress"] + (["Egress"] if policy.spec.get("egress") else [])


class PolicyIndex:
    """The NetworkPolicies that select each pod template, found once per policy (a policy's
    matchLabels narrow the pods to look at), so checking many connections stays linear."""

    def __init__(self, policies: Iterable[Resource], templates: Iterable[PodTemplate]):
        self._policies = [p for p in policies if p.type == NETWORK_POLICY]
        templates = list(templates)
        pods = LabelIndex((t.owner.namespace, t.labels, t) for t in templates)
        self._selecting: dict[int, list[Resource]] = {id(t): [] for t in templates}
        for policy in self._policies:
            selector = policy.spec.get("podSelector") or {}
            for template in pods.candidates([policy.namespace], selector.get("matchLabels") or {}):
                if _selects(selector, template.labels):
                    self._selecting[id(template)].append(policy)

    def selecting(self, endpoint: Endpoint) -> list[Resource]:
        """Policies of the endpoint's namespace that select it (a scan for a pod not declared here)."""
        if endpoint.template is not None and id(endpoint.template) in self._selecting:
            return self._selecting[id(endpoint.template)]
        return [
            p
            for p in self._policies
            if p.namespace == endpoint.namespace and _selects(p.spec.get("podSelector"), endpoint.labels)
        ]


def blocked_by(index: PolicyIndex, source: Endpoint, destination: Endpoint) -> str | None:
    """None if the connection is allowed, else which direction refuses it and why."""
    egress = [p for p in index.selecting(source) if "Egress" in _types(p)]
    if egress and not any(
        (not rule.get("to") or any(_peer_matches(peer, p.namespace, destination) for peer in rule["to"]))
        and _port_matches(rule.get("ports"), destination)
        for p in egress
        for rule in p.spec.get("egress") or []
    ):
        names = ", ".join(p.object_name for p in egress)
        return f"egress of {source.description} ({names}) admits no connection to {destination.description}"
    ingress = [p for p in index.selecting(destination) if "Ingress" in _types(p)]
    if ingress and not any(
        (not rule.get("from") or any(_peer_matches(peer, p.namespace, source) for peer in rule["from"]))
        and _port_matches(rule.get("ports"), destination)
        for p in ingress
        for rule in p.spec.get("ingress") or []
    ):
        names = ", ".join(p.object_name for p in ingress)
        return f"ingress of {destination.description} ({names}) admits no connection from {source.description}"
    return None
