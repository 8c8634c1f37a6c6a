"""Prometheus's own engine for the project's queries: `promtool check rules` and `promtool test
rules` (Debian's `prometheus` package: `make test` unpacks its promtool into .venv/bin).

A case gives synthetic series, each a counter growing at a steady rate (or a gauge), sampled
every STEP seconds from time 0, and what Prometheus must answer at `eval_time`: an expression's
samples (`promql_expr_test`) or the alerts firing (`alert_rule_test`). The rules file format
and the test file format are promtool's (prometheus docs/configuration/unit_testing_rules.md);
promtool itself reports any difference with the expected and the actual result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# `make test` puts it beside the virtualenv's python (Makefile, $(PROMTOOL)); else PATH's.
_BESIDE = Path(sys.executable).parent / "promtool"
PROMTOOL = str(_BESIDE) if _BESIDE.exists() else shutil.which("promtool")
MISSING = "promtool (Debian's prometheus package) is missing: `make test` unpacks it into .venv/bin"
STEP = 15  # seconds between samples
SAMPLES = 80  # 20 minutes of samples
TOLERANCE = 1e-9


def selector(name: str, labels: Mapping[str, str]) -> str:
    """`name{label="value", ...}`, each value quoted as a Go string (what PromQL reads)."""
    return name + "{" + ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(labels.items())) + "}"


def counter(name: str, per_second: float, labels: Mapping[str, str]) -> dict[str, str]:
    """A counter growing by `per_second` every second (sampled every STEP s)."""
    return {"series": selector(name, labels), "values": f"0+{per_second * STEP:g}x{SAMPLES}"}


def gauge(name: str, value: float, labels: Mapping[str, str]) -> dict[str, str]:
    return {"series": selector(name, labels), "values": f"{value:g}x{SAMPLES}"}


def expr_case(expr: str, samples: Sequence[tuple[Mapping[str, str], float]], eval_time: str = "10m") -> dict:
    """The expression's answer at `eval_time`: these samples (labels, value), or none.

    promtool compares values exactly (2.42: `6E-01` is not `6.000000000000001E-01`, a rate's
    rounding), so a value is checked within TOLERANCE: the case asks whether
    `abs((expr) - value) < TOLERANCE` holds (1) for each expected label set, the samples sharing
    one value; an empty answer stays empty.
    """
    if not samples:
        return {"expr": expr, "eval_time": eval_time, "exp_samples": []}
    values = {value for _, value in samples}
    assert len(values) == 1, "one expected value per case"
    (value,) = values
    return {
        "expr": f"abs(({expr}) - {value!r}) < bool {TOLERANCE!r}",
        "eval_time": eval_time,
        "exp_samples": [{"labels": selector("", labels), "value": 1} for labels, _ in samples],
    }


def alert_case(rule: Mapping[str, Any], firing: bool, eval_time: str = "20m", **labels: str) -> dict:
    """The alerting `rule` at `eval_time`: firing once, with its labels (plus `labels`, those
    its expression keeps) and annotations, or not at all."""
    expected = {
        "exp_labels": dict(rule.get("labels") or {}) | labels,
        "exp_annotations": dict(rule.get("annotations") or {}),
    }
    return {"eval_time": eval_time, "alertname": rule["alert"], "exp_alerts": [expected] if firing else []}


def run_rule_tests(
    directory: Path,
    series: Sequence[dict[str, str]],
    exprs: Sequence[dict] = (),
    alerts: Sequence[dict] = (),
    groups: Sequence[Mapping[str, Any]] = (),
) -> None:
    """One promtool test of `groups` (a PrometheusRule's `spec.groups`) over `series`; fails the
    test with promtool's own report."""
    assert PROMTOOL is not None, MISSING
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": list(groups)}))
    case: dict[str, Any] = {"interval": f"{STEP}s", "input_series": list(series)}
    if exprs:
        case["promql_expr_test"] = list(exprs)
    if alerts:
        case["alert_rule_test"] = list(alerts)
    tests = directory / "tests.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [case]}, sort_keys=False)
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", tests.name], cwd=directory, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}\n{result.stderr}"


def check_rules(directory: Path, groups: Sequence[Mapping[str, Any]]) -> str:
    """`promtool check rules` of the groups; fails the test with its report; returns its output."""
    assert PROMTOOL is not None, MISSING
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": list(groups)}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool check rules:\n{result.stdout}\n{result.stderr}"
    return result.stdout
