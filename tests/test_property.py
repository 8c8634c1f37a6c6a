"""Property-based: whatever document reaches the loader, the only failure is a clean ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.spec.errors import ConfigError
from infra.spec.manifest import ModelManifest, parse_manifest
from infra.spec.settings import StackSettings, settings_from_config
from infra.spec.yamlio import read_yaml
from tests.conftest import ROOT

VALID = yaml.safe_load((ROOT / "models" / "iris.yaml").read_text())
STACK = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod.yaml").read_text())["config"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["iris", "1", "sha256:" + "a" * 64, "500m", "maximize", "stable", ""]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-3, 5)), children, max_size=5),
    ),
    max_leaves=25,
)


def paths(node, prefix=()):
    """Every path into a nested document."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def replaced(document, path, value):
    if not path:
        return value
    document = copy.deepcopy(document)
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


def assert_clean(call):
    try:
        result = call()
    except ConfigError as exc:
        assert exc.errors
        for item in exc.errors:
            assert item.file and item.message and "\n" not in item.message
        return None
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_documents_give_a_manifest_or_a_clean_error(document):
    result = assert_clean(lambda: parse_manifest(document, "models/iris.yaml", "iris"))
    assert result is None or isinstance(result, ModelManifest)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_one_field_of_a_valid_manifest_replaced_by_junk(data):
    path = data.draw(st.sampled_from(list(paths(VALID))))
    document = replaced(VALID, path, data.draw(documents))
    result = assert_clean(lambda: parse_manifest(document, "models/iris.yaml", "iris"))
    if result is not None:
        # Whatever was accepted satisfies the cross-field rules.
        for env, served in result.environments.items():
            assert set(served.labels().values()) <= set(result.versions)
            scaling = result.serving_for(env).autoscaling
            assert scaling.min_replicas <= scaling.max_replicas


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_one_stack_setting_replaced_by_junk(data):
    path = data.draw(st.sampled_from([p for p in paths(STACK) if p and str(p[0]).startswith("model-serving:")]))
    config = replaced(STACK, path, data.draw(documents))
    get = lambda key: config.get(f"model-serving:{key}")  # noqa: E731
    result = assert_clean(lambda: settings_from_config("prod", get, "stacks/Pulumi.prod.yaml"))
    assert result is None or isinstance(result, StackSettings)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("yaml") / "doc.yaml"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_random_text_gives_a_document_or_a_clean_error(scratch, text):
    scratch.write_text(text, encoding="utf-8")
    assert_clean(lambda: read_yaml(scratch, "models/doc.yaml"))
