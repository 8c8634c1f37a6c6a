"""A tiny PromQL evaluator for the shapes our SLO queries use, over synthetic per-series rates.

It reads the expression with promql-parser (the parser the other tests use) and supports
only what the success-rate and error-ratio queries need: `rate(selector[range])` (the
synthetic value of each series *is* its rate), `sum` with or without `by`, `+ - * /` between
vectors (one-to-one on the full label set) or with a number, and `or`. Anything else raises,
so a query of another shape fails the test instead of being evaluated wrongly. Semantics follow
Prometheus: a binary operation between vectors keeps only the label sets on both sides, and
`a or b` is `a` plus the elements of `b` whose label set `a` lacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import promql_parser

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Series = tuple[Mapping[str, str], float]  # labels including `__name__`, and the rate


def evaluate(query: str, series: Sequence[Series]) -> Vector | float:
    return _eval(promql_parser.parse(query), series)


def _matches(matcher, labels: Mapping[str, str]) -> bool:
    value = labels.get(matcher.name, "")
    op = str(matcher.op)
    if op == "MatchOp.Equal":
        return value == matcher.value
    if op == "MatchOp.NotEqual":
        return value != matcher.value
    if op == "MatchOp.Re":
        return re.fullmatch(matcher.value, value) is not None
    if op == "MatchOp.NotRe":
        return re.fullmatch(matcher.value, value) is None
    raise NotImplementedError(op)


def _select(selector, series: Sequence[Series]) -> Vector:
    assert len({frozenset(labels.items()) for labels, _ in series}) == len(series), "a series twice"
    matchers = selector.matchers.matchers
    return {
        frozenset((k, v) for k, v in labels.items() if k != "__name__"): rate
        for labels, rate in series
        if labels["__name__"] == selector.name and all(_matches(m, labels) for m in matchers)
    }


def _binary(op: str, left: Vector | float, right: Vector | float) -> Vector | float:
    apply = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": _divide}[op]
    if isinstance(left, float) and isinstance(right, float):
        return apply(left, right)
    if isinstance(left, float):
        return {k: apply(left, v) for k, v in right.items()}
    if isinstance(right, float):
        return {k: apply(v, right) for k, v in left.items()}
    return {k: apply(v, right[k]) for k, v in left.items() if k in right}


def _divide(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _eval(node, series: Sequence[Series]) -> Vector | float:
    kind = type(node).__name__
    if kind == "NumberLiteral":
        return float(node.val)
    if kind == "ParenExpr":
        return _eval(node.expr, series)
    if kind == "Call" and node.func.name == "rate":
        return _select(node.args[0].vector_selector, series)
    if kind == "AggregateExpr" and str(node.op) == "sum":
        vector = _eval(node.expr, series)
        assert isinstance(vector, dict)
        by = set(node.modifier.labels) if node.modifier is not None else set()
        sums: Vector = {}
        for labels, value in vector.items():
            group = frozenset((k, v) for k, v in labels if k in by)
            sums[group] = sums.get(group, 0.0) + value
        return sums
    if kind == "BinaryExpr":
        op = str(node.op)
        left, right = _eval(node.lhs, series), _eval(node.rhs, series)
        if op == "or":
            assert isinstance(left, dict) and isinstance(right, dict)
            return left | {k: v for k, v in right.items() if k not in left}
        return _binary(op, left, right)
    raise NotImplementedError(f"{kind}: {node}")


def value(result: Vector | float) -> float | None:
    """The single value of an aggregate without `by`, or None when the result is empty."""
    if isinstance(result, float):
        return result
    assert len(result) <= 1, result
    return next(iter(result.values()), None)
