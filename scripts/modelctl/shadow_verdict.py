"""The shadow verdict `modelctl promote --require-shadow` reads from Prometheus's HTTP API (docs/shadow.md).

The queries are infra/model/shadow.py's, proven on Prometheus's own engine by
tests/test_shadow_queries.py; this module only asks them (`GET /api/v1/query`, Prometheus
docs/querying/api.md, "Instant queries") and judges the answers against the manifest's thresholds.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from infra.model.shadow import verdict_queries
from infra.spec.shadow import Shadow

# Each query is answered within this, or the verdict is not shown (never a hung promotion).
QUERY_TIMEOUT_SECONDS = 10.0
# A response larger than this is not Prometheus answering one series.
MAX_RESPONSE_BYTES = 1 << 20


class ShadowVerdictError(Exception):
    """Prometheus could not be asked, or did not answer as Prometheus does; the message says why."""


def query(address: str, expr: str, timeout: float = QUERY_TIMEOUT_SECONDS) -> float | None:
    """The value of an instant query that answers one series, or None when it answers none (or NaN)."""
    url = f"{address.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        # Prometheus answers a bad query with 400/422 and a JSON error body.
        detail = _error_of(exc.read(MAX_RESPONSE_BYTES))
        raise ShadowVerdictError(f"Prometheus at {address} answered HTTP {exc.code}{detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ShadowVerdictError(f"Prometheus at {address} is unreachable: {reason}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise ShadowVerdictError(f"Prometheus at {address} answered more than {MAX_RESPONSE_BYTES} bytes")
    try:
        answer = json.loads(body)
        if answer["status"] != "success":
            raise ShadowVerdictError(f"Prometheus at {address} answered {answer['status']}{_error_of(body)}")
        data = answer["data"]
        if data["resultType"] != "vector":
            raise ShadowVerdictError(f"Prometheus at {address} answered a {data['resultType']}, not a vector")
        result = data["result"]
        if not result:
            return None
        if len(result) > 1:
            raise ShadowVerdictError(f"Prometheus at {address} answered {len(result)} series; the verdict needs one")
        value = float(result[0]["value"][1])
    except (ValueError, KeyError, TypeError, IndexError):
        raise ShadowVerdictError(f"Prometheus at {address} did not answer in Prometheus's JSON format") from None
    return None if math.isnan(value) else value


def _error_of(body: bytes) -> str:
    try:
        return f": {json.loads(body)['error']}"
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True)
class Verdict:
    """What the shadow showed against the stable, and why it does not hold (empty: it holds)."""

    where: str
    measured: dict[str, float | None]
    failures: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        shown = ", ".join(f"{key} {_shown(value)}" for key, value in self.measured.items())
        verdict = "holds" if self.holds else "does not hold: " + "; ".join(self.failures)
        return f"shadow verdict in {self.where} ({shown}): {verdict}"


def _shown(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def judge(measured: dict[str, float | None], shadow: Shadow) -> list[str]:
    """Why the measurements fall short of the manifest's thresholds; a missing one never passes."""
    rule = shadow.verdict
    failures = []
    minutes = measured["shadow_minutes"]
    if minutes is None or minutes < rule.min_duration_minutes:
        failures.append(
            f"the shadow served calls in {_shown(minutes)} of the last {rule.min_duration_minutes} minutes; "
            "it must serve through all of them (min_duration_minutes)"
        )
    requests = measured["shadow_requests"]
    if requests is None or requests < rule.min_requests:
        failures.append(f"the shadow served {_shown(requests)} prediction calls; at least {rule.min_requests} needed")
    shadow_errors, stable_errors = measured["shadow_error_ratio"], measured["stable_error_ratio"]
    if shadow_errors is None or stable_errors is None:
        failures.append("no error ratio to compare (a side served no prediction call)")
    elif shadow_errors > stable_errors + rule.max_error_ratio_increase:
        failures.append(
            f"error ratio {shadow_errors:g} against the stable's {stable_errors:g}: more than "
            f"{rule.max_error_ratio_increase:g} higher (max_error_ratio_increase)"
        )
    shadow_p95, stable_p95 = measured["shadow_latency_p95_us"], measured["stable_latency_p95_us"]
    if shadow_p95 is None or stable_p95 is None:
        failures.append("no p95 latency to compare (a side had no successful prediction call)")
    elif shadow_p95 > stable_p95 * (1 + rule.max_latency_increase):
        failures.append(
            f"p95 latency {shadow_p95:g}us against the stable's {stable_p95:g}us: more than "
            f"{rule.max_latency_increase:.0%} slower (max_latency_increase)"
        )
    return failures


def read_verdict(
    address: str, namespace: str, model: str, shadow: Shadow, where: str, timeout: float = QUERY_TIMEOUT_SECONDS
) -> Verdict:
    """Ask Prometheus every verdict query of `model`'s shadow in `namespace` and judge the answers."""
    queries = verdict_queries(namespace, model, shadow.version, shadow.verdict.min_duration_minutes)
    measured = {key: query(address, expr, timeout) for key, expr in queries.items()}
    return Verdict(where, measured, judge(measured, shadow))
