"""Kubernetes label and annotation keys and values, checked as the API server checks them.

Rules from k8s.io/apimachinery@eed236c: a key is a "qualified name" (`IsQualifiedName`, now
`IsLabelKey`, pkg/api/validate/content/kube.go:36-72): an optional DNS-1123 subdomain prefix
of at most 253 characters (content/dns.go:57-66) and `/`, then a name of at most 63
characters matching `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` (kube.go:24-28). A label value
is empty or such a name (`IsLabelValue`, kube.go:74-95). Annotation keys are qualified names
compared in lower case, and all keys and values of one object together hold at most 256 KiB
(`ValidateAnnotations`, `TotalAnnotationSizeLimitB`, pkg/api/validation/objectmeta.go:39-70).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator

from infra.spec.errors import FieldProblemsError

NAME_MAX = 63
PREFIX_MAX = 253
TOTAL_ANNOTATION_SIZE_LIMIT_B = 256 * 1024
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Labels and annotations this project sets on the objects it declares (infra/model/workload.py,
# infra/platform/cluster.py): a stack's own keys under this prefix would overwrite them (the
# stack's labels are merged last) and break selectors, so they are refused.
PROJECT_PREFIX = "model-serving.dev"


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes qualified name (a label or annotation key), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and "/" in prefix:
        return "has more than one '/'; a key is [prefix/]name"
    if slash:
        if not prefix:
            return "has an empty prefix before '/'"
        if len(prefix) > PREFIX_MAX or not _DNS_SUBDOMAIN.fullmatch(prefix):
            return (
                f"prefix {prefix!r} is not a DNS subdomain (at most {PREFIX_MAX} lower-case letters, digits, "
                "'-' and '.', starting and ending with a letter or digit)"
            )
    if not name:
        return "has an empty name"
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        return (
            f"name {name!r} must be at most {NAME_MAX} letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a Kubernetes label value, or None."""
    if value == "" or (len(value) <= NAME_MAX and _NAME.fullmatch(value)):
        return None
    return (
        f"Got {value!r}; a label value is empty or at most {NAME_MAX} letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit"
    )


def _key_problems(keys: Mapping[str, str], reserved: bool, caseless: bool = False) -> list[tuple[str, str]]:
    # Annotation keys are checked in lower case (objectmeta.go:50-51); label keys as written.
    problems = []
    for key in keys:
        problem = qualified_name_problem(key.lower() if caseless else key)
        if problem is not None:
            problems.append((key, f"not a Kubernetes qualified name: {problem}"))
        elif reserved and key.lower().rpartition("/")[0] == PROJECT_PREFIX:
            problems.append((key, f"keys under {PROJECT_PREFIX}/ are set by this project; choose another prefix"))
    return problems


def _labels(labels: Mapping[str, str], reserved: bool) -> Mapping[str, str]:
    problems = _key_problems(labels, reserved)
    for key, value in labels.items():
        problem = label_value_problem(value)
        if problem is not None:
            problems.append((key, problem))
    if problems:
        raise FieldProblemsError(problems)
    return labels


def _annotations(annotations: Mapping[str, str]) -> Mapping[str, str]:
    problems = _key_problems(annotations, reserved=True, caseless=True)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT_B:
        problems.append(("", f"{size} bytes of keys and values; Kubernetes allows {TOTAL_ANNOTATION_SIZE_LIMIT_B}"))
    if problems:
        raise FieldProblemsError(problems)
    return annotations


# Labels of objects that exist already (an existing cluster's nodes): any valid label.
Labels = Annotated[dict[str, str], AfterValidator(lambda labels: _labels(labels, reserved=False))]
# Labels this project puts on objects it declares, beside its own.
OwnLabels = Annotated[dict[str, str], AfterValidator(lambda labels: _labels(labels, reserved=True))]
# Annotations this project puts on objects it declares, beside its own.
Annotations = Annotated[dict[str, str], AfterValidator(_annotations)]
