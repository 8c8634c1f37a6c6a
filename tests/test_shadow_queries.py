"""The shadow verdict's queries (infra/model/shadow.py) on Prometheus's own engine (promtool,
tests/promtool.py): synthetic series named and labelled as TF-Serving exports them and as the
ServiceMonitors relabel them (`track`, `version`), with the kubelet's probes, another model, another
track, the shadow's previous version, a late start, failing calls and absent series."""

from __future__ import annotations

import pytest

from infra.model.shadow import verdict_queries
from tests.promtool import SAMPLES, STEP, check_rules, counter, expr_case, run_rule_tests

NAMESPACE = "models-dev"
LATENCY_COUNT = ":tensorflow:serving:request_latency_count"
LATENCY_BUCKET = ":tensorflow:serving:request_latency_bucket"
REQUEST_COUNT = ":tensorflow:serving:request_count"
MINUTES = 10  # the verdict's window; the series last 20 minutes, the cases look at minute 15
EVAL = "15m"
QUERIES = verdict_queries(NAMESPACE, "iris", 3, MINUTES)
# Latency buckets (microseconds, cumulative share of successful predictions per `le`).
FAST = {"1000": 0.9, "5000": 1.0, "+Inf": 1.0}  # p95 = 1000 + 4000 * 0.5 = 3000
SLOW = {"1000": 0.0, "5000": 0.9, "25000": 1.0, "+Inf": 1.0}  # p95 = 5000 + 20000 * 0.5 = 15000


def started(series: dict[str, str], minute: int) -> dict[str, str]:
    """The same counter, absent until `minute` (a pod that started then)."""
    missing = minute * 60 // STEP
    per_step = series["values"].split("+")[1].split("x")[0]
    return {"series": series["series"], "values": f"_x{missing} 0+{per_step}x{SAMPLES - missing}"}


def stopped(series: dict[str, str], minute: int) -> dict[str, str]:
    """The same counter, flat from `minute` on (the mirror was removed, the pod kept running)."""
    steps = minute * 60 // STEP
    per_step = float(series["values"].split("+")[1].split("x")[0])
    return {"series": series["series"], "values": f"0+{per_step:g}x{steps} {per_step * steps:g}+0x{SAMPLES - steps}"}


def exported(
    track: str,
    predictions: float,
    failures: float = 0.0,
    probes: float = 0.0,
    version: str | None = None,
    model: str = "iris",
    latency: dict[str, float] = FAST,
) -> list[dict[str, str]]:
    """What one track's pods export for `model`: REST and gRPC predictions (latency count and
    buckets), failed calls, and the kubelet's probes (an empty API, `status="OK"`, and fast)."""
    labels = {"namespace": NAMESPACE, "model_name": model, "track": track, "pod": f"{model}-{track}-abc-x1"}
    if version is not None:
        labels["version"] = version
    rates = [
        (LATENCY_COUNT, predictions * 3 / 4, {"API": "predict"}),
        (LATENCY_COUNT, predictions / 4, {"API": "Predict"}),
        (LATENCY_COUNT, probes, {"API": ""}),
        (REQUEST_COUNT, predictions + probes, {"status": "OK"}),
        (REQUEST_COUNT, failures, {"status": "INTERNAL"}),
    ]
    series = [counter(name, rate, labels | more) for name, rate, more in rates if rate]
    if predictions:
        series += [
            counter(LATENCY_BUCKET, predictions * share, labels | {"API": "predict", "le": le})
            for le, share in latency.items()
        ]
    if probes:
        # Probes answer in microseconds: counted, they would pull every quantile down.
        series += [counter(LATENCY_BUCKET, probes, labels | {"API": "", "le": le}) for le in ("1000", "+Inf")]
    return series


def answers(tmp_path, name: str, series: list[dict[str, str]], expected: dict[str, float | None]) -> None:
    cases = [expr_case(QUERIES[key], [] if value is None else [({}, value)], EVAL) for key, value in expected.items()]
    run_rule_tests(tmp_path / name, series, cases)


def test_every_verdict_query_passes_promtool_check(tmp_path):
    rules = [{"record": f"model_serving:shadow_verdict:{key}", "expr": expr} for key, expr in QUERIES.items()]
    assert "SUCCESS" in check_rules(tmp_path, [{"name": "shadow-verdict", "rules": rules}])
    assert set(QUERIES) == {
        "shadow_minutes",
        "shadow_requests",
        "stable_requests",
        "shadow_error_ratio",
        "stable_error_ratio",
        "shadow_latency_p95_us",
        "stable_latency_p95_us",
    }


def traffic() -> list[dict[str, str]]:
    """The stable serves 8/s with no failure (its failure counter is absent); the shadow, version 3,
    takes 2/s of mirrored calls, a quarter of them failing, and slower; probes on both sides."""
    return exported("stable", 8.0, probes=6.0, version="1") + exported(
        "shadow", 1.5, failures=0.5, probes=6.0, version="3", latency=SLOW
    )


def test_each_side_counts_its_own_prediction_calls_errors_and_latency(tmp_path):
    answers(
        tmp_path,
        "sides",
        traffic(),
        {
            "shadow_requests": 2.0 * MINUTES * 60,
            "stable_requests": 8.0 * MINUTES * 60,
            "shadow_error_ratio": 0.25,
            # No failure series yet on the stable: 0, not "no answer".
            "stable_error_ratio": 0.0,
            "shadow_latency_p95_us": 15000.0,
            "stable_latency_p95_us": 3000.0,
        },
    )


def test_other_models_tracks_namespaces_and_the_previous_shadow_version_are_not_counted(tmp_path):
    elsewhere = (
        exported("stable", 50.0, failures=50.0, model="taxi-fare", latency=SLOW)
        + exported("shadow", 50.0, failures=50.0, model="taxi-fare", version="3", latency=SLOW)
        + exported("canary", 30.0, failures=30.0, version="2", latency=SLOW)
        # The version the shadow served before a bump: not the one judged.
        + exported("shadow", 40.0, failures=40.0, version="2", latency=FAST)
        + [
            dict(s, series=s["series"].replace(NAMESPACE, "models-staging"))
            for s in exported("shadow", 9.0, failures=9.0, version="3")
        ]
    )
    answers(
        tmp_path,
        "elsewhere",
        traffic() + elsewhere,
        {
            "shadow_requests": 2.0 * MINUTES * 60,
            "stable_requests": 8.0 * MINUTES * 60,
            "shadow_error_ratio": 0.25,
            "stable_error_ratio": 0.0,
            "shadow_latency_p95_us": 15000.0,
            "stable_latency_p95_us": 3000.0,
        },
    )


def test_probes_alone_are_no_calls_and_absent_series_no_answer(tmp_path):
    probes_only = exported("stable", 0.0, probes=6.0) + exported("shadow", 0.0, probes=6.0, version="3")
    nothing = {key: None for key in QUERIES}
    answers(tmp_path, "probes-only", probes_only, nothing)
    answers(tmp_path, "absent", [], nothing)
    # A shadow with no series beside a stable that serves: the shadow's side has no answer.
    only_stable = exported("stable", 8.0, version="1")
    answers(
        tmp_path,
        "no-shadow",
        only_stable,
        {"shadow_minutes": None, "shadow_requests": None, "shadow_error_ratio": None, "shadow_latency_p95_us": None},
    )


def test_a_shadow_failing_every_call_has_error_ratio_one_and_no_latency(tmp_path):
    failing = exported("stable", 8.0, version="1") + exported("shadow", 0.0, failures=2.0, version="3")
    answers(
        tmp_path,
        "all-failing",
        failing,
        {"shadow_requests": 2.0 * MINUTES * 60, "shadow_error_ratio": 1.0, "shadow_latency_p95_us": None},
    )


@pytest.mark.parametrize(
    ("name", "change", "full"), [("through", None, 1), ("late", started, 0), ("stopped", stopped, 0)]
)
def test_the_minutes_served_cover_the_window_only_if_the_shadow_served_through_it(tmp_path, name, change, full):
    """Served since minute 0: the whole window; started at minute 9, or idle since minute 7 (its
    series still there, flat): not."""
    shadow = exported("shadow", 2.0, version="3")
    if change is started:
        shadow = [started(s, 9) for s in shadow]
    elif change is stopped:
        shadow = [stopped(s, 7) for s in shadow]
    case = expr_case(f"{QUERIES['shadow_minutes']} >= bool {MINUTES}", [({}, full)], EVAL)
    run_rule_tests(tmp_path / "minutes", exported("stable", 8.0, version="1") + shadow, [case])


def test_the_queries_select_exactly_the_shadow_version_and_the_stable_track():
    assert 'track="shadow", version="3"' in QUERIES["shadow_requests"]
    assert 'track="stable"' in QUERIES["stable_requests"] and "version=" not in QUERIES["stable_requests"]
