"""Request mirrors (a shadow's RequestMirror filters, docs/shadow.md), checked as Envoy Gateway would
take them. Pure functions over policy Resources, like engines.py.

Citations are envoyproxy/gateway@v1.9.0 and the Gateway API v1.6.1 CRDs (tests/schemas/).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policy.engines import Resource

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
# A rule whose filters mirror and also redirect (or answer directly, an Envoy Gateway extension
# reached through an ExtensionRef) is refused by Envoy Gateway's translator as IncompatibleFilters
# (internal/gatewayapi/filters.go:142-160). Of the standard filter types, RequestRedirect.
INCOMPATIBLE_WITH_MIRROR = ("RequestRedirect",)


def _mirrors(rule: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for f in rule.get("filters") or []:
        if f.get("type") == "RequestMirror":
            yield (f.get("requestMirror") or {}).get("backendRef") or {}


def mirrors_take_no_client_traffic(
    resources: Sequence[Resource], settings: object = None
) -> list[tuple[Resource, str]]:
    """Routes whose mirror target also takes client requests (a backendRef of any route: its answers
    would reach clients, and it would count them as mirrored calls in the shadow verdict), or whose
    mirroring rule Envoy Gateway refuses."""
    routes = [r for r in resources if r.kind in ROUTE_KINDS]
    routed = {
        (ref.get("namespace", route.namespace), ref.get("name"))
        for route in routes
        for rule in route.spec.get("rules") or []
        for ref in rule.get("backendRefs") or []
    }
    problems = []
    for route in routes:
        for rule in route.spec.get("rules") or []:
            mirrors = list(_mirrors(rule))
            if not mirrors:
                continue
            for ref in mirrors:
                if (ref.get("namespace", route.namespace), ref.get("name")) in routed:
                    problems.append(
                        (
                            route,
                            f"mirrors to Service {ref.get('name')}, which a route also sends client requests to; "
                            "a shadow takes mirrored requests only",
                        )
                    )
            incompatible = sorted({f.get("type") for f in rule.get("filters") or []} & set(INCOMPATIBLE_WITH_MIRROR))
            if incompatible:
                problems.append(
                    (
                        route,
                        f"a rule both mirrors and has {', '.join(incompatible)}: Envoy Gateway refuses the rule "
                        "(IncompatibleFilters, internal/gatewayapi/filters.go:142-160)",
                    )
                )
    return problems
