"""Every rendered object against the real schemas: Kubernetes OpenAPI, Gateway API CRDs, Pulumi.yaml."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, STACKS

SCHEMAS = Path(__file__).parent / "schemas"
CRD_DIRS = ("gateway-api-v1.6.1", "prometheus-operator-v0.93.0", "flagger-v1.44.0", "keda-v2.20.2")
# The oldest Kubernetes the program supports (the preStop `sleep` action is on by default
# from 1.30) and the newest the schema package ships.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@cache
def crds() -> dict[tuple[str, str], dict]:
    """(group, kind) -> CustomResourceDefinition, from the CRD files under tests/schemas/."""
    found = {}
    for directory in CRD_DIRS:
        for path in sorted((SCHEMAS / directory).glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                if document and document.get("kind") == "CustomResourceDefinition":
                    found[(document["spec"]["group"], document["spec"]["names"]["kind"])] = document
    return found


# Custom kinds with no CRD file under tests/schemas/: tests/test_platform.py checks the
# GatewayClass against the required fields and controllerName pattern of its CRD instead.
CHECKED_ELSEWHERE = {("gateway.networking.k8s.io", "GatewayClass")}


def _group_kind(obj: dict) -> tuple[str, str]:
    return (obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "", obj["kind"])


def is_custom(obj: dict) -> bool:
    return _group_kind(obj) in crds()


def _closed(schema: dict) -> dict:
    """A CRD schema made strict like kubernetes-validate's: unknown properties are errors.

    The API server prunes unknown fields of a structural schema silently, so a typo in a
    route would vanish at apply time; tests refuse them instead.
    """
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    group, version = api_version.split("/")
    crd = crds()[(group, kind)]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _closed(served["schema"]["openAPIV3Schema"])
    # Metadata is the API server's, not the CRD's: check it against ObjectMeta separately.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def rendered(runs):
    for stack in STACKS:
        for resource in runs[stack].kubernetes_objects():
            yield stack, resource


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_builtin_object_passes_the_kubernetes_schema_in_strict_mode(runs, kubernetes_version):
    kinds = set()
    for stack, resource in rendered(runs):
        obj = resource.object
        if is_custom(obj) or _group_kind(obj) in CHECKED_ELSEWHERE:
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{stack} {resource.urn}: {exc.message} at {list(exc.path)}")
        kinds.add(obj["kind"])
    assert kinds == {
        "Namespace",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    }


def test_custom_resources_pass_their_crd_schemas(runs):
    """Gateway API, Prometheus Operator and Flagger objects against the CRDs in tests/schemas/."""
    kinds = set()
    for stack, resource in rendered(runs):
        obj = resource.object
        if not is_custom(obj):
            continue
        errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
        assert not errors, f"{stack} {resource.urn}: {errors[0].message} at {list(errors[0].path)}"
        # Their metadata is an ordinary ObjectMeta.
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBERNETES_VERSIONS[0], strict=True
        )
        kinds.add(obj["kind"])
    assert kinds == {
        "HTTPRoute",
        "GRPCRoute",
        "Gateway",
        "ServiceMonitor",
        "PrometheusRule",
        "Canary",
        "MetricTemplate",
    }


def test_the_crd_check_refuses_a_misspelt_field(runs):
    route = next(r.object for _, r in rendered(runs) if r.object["kind"] == "HTTPRoute")
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["prot"] = 8501
    assert list(crd_validator("gateway.networking.k8s.io/v1", "HTTPRoute").iter_errors(broken))


def test_the_kubernetes_check_refuses_a_misspelt_field(runs):
    deployment = next(r.object for _, r in rendered(runs) if r.object["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_pulumi_yaml_passes_pulumis_project_schema():
    schema = json.loads((SCHEMAS / "pulumi-project.json").read_text())
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    jsonschema.validate(project, schema)
    assert project["name"] == "model-serving"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    assert project["stackConfigDir"] == "stacks"


def test_root_shim_calls_the_program():
    source = (ROOT / "__main__.py").read_text()
    assert "from infra.program import main" in source and "main()" in source
