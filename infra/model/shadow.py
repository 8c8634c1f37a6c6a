"""The shadow verdict's PromQL (pure builders): the shadow's pods against the stable's, over one window.

The series are TF-Serving's own (infra/model/observability.py says which and why prediction calls
are counted so): `model_name` is TF-Serving's label, and the ServiceMonitors copy each pod's track
(and a dedicated model's version) onto every series (observability.service_monitor,
pool_service_monitor). So the shadow is `track="shadow", version="<V>"` (exactly the version
under judgement, not one the shadow served before a bump), and the stable is `track="stable"`,
the model's own pods or its pool's (a pool's series carry no version). A shadow answers no client:
Envoy mirrors "fire and forget" (envoyproxy/envoy api/envoy/config/route/v3/
route_components.proto, RouteAction.RequestMirrorPolicy), so what can be compared is what
TF-Serving measures on each side: calls, failures and the latency of successful calls.
TF-Serving exports no statistic of the outputs it returns (tensorflow_serving/servables/
tensorflow/util.cc:54-89 define counts, latencies and example counts only), and its request
logger cannot run in the stock binary (no LogCollector is registered: core/log_collector_test.cc
:51 is the only RegisterFactory; tensorflow/serving#408): comparing outputs needs a logging side
path outside TF-Serving, which this project does not build (docs/shadow.md).
"""

from __future__ import annotations

from infra.model.observability import error_ratio, latency_quantile, prediction_calls
from infra.spec.manifest import LABEL_STABLE
from infra.spec.shadow import LABEL_SHADOW

VERDICT_QUANTILE = 0.95
# The window of "is the shadow taking calls now": four scrapes (observability.SCRAPE_INTERVAL 30s),
# as KEDA's trigger (infra/model/keda.py RATE_WINDOW).
ACTIVE_WINDOW = "2m"
# How finely the minutes served are sampled (a subquery step).
MINUTE = "1m"


def track_selector(namespace: str, model_name: str, track: str, version: int | None = None) -> str:
    """The series of one model's track (and version) in the namespace."""
    where = f'namespace="{namespace}", model_name="{model_name}", track="{track}"'
    return where + f', version="{version}"' if version is not None else where


def verdict_queries(namespace: str, model_name: str, shadow_version: int, minutes: int) -> dict[str, str]:
    """The verdict's queries, each one series or none, over the last `minutes`:

    - `shadow_minutes`: minutes of the window in which the shadow version served calls;
    - `<side>_requests`: prediction calls served (probes excluded), shadow and stable;
    - `<side>_error_ratio`: failed calls / prediction calls;
    - `<side>_latency_p95_us`: p95 latency of successful prediction calls, microseconds.

    No series means nothing measured (no call served, or no success for a latency), which the
    verdict reads as "not shown", never as zero.
    """
    window = f"{minutes}m"
    sides = {
        LABEL_SHADOW: track_selector(namespace, model_name, LABEL_SHADOW, shadow_version),
        LABEL_STABLE: track_selector(namespace, model_name, LABEL_STABLE),
    }
    queries = {
        "shadow_minutes": (
            f"count_over_time(({prediction_calls(sides[LABEL_SHADOW], ACTIVE_WINDOW)} > 0)[{window}:{MINUTE}])"
        )
    }
    for side, where in sides.items():
        # rate x seconds: the calls of the window, as `increase` extrapolates them.
        queries[f"{side}_requests"] = f"{prediction_calls(where, window)} * {minutes * 60}"
        queries[f"{side}_error_ratio"] = error_ratio(where, window)
        queries[f"{side}_latency_p95_us"] = latency_quantile(VERDICT_QUANTILE, where, window)
    return queries
