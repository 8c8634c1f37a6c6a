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
GATEWAY_API = SCHEMAS / "gateway-api-v1.6.1"
# The oldest Kubernetes the program supports (the preStop `sleep` action is on by default
# from 1.30) and the newest the schema package ships.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD_FILES = {"HTTPRoute": "httproutes.yaml", "Gateway": "gateways.yaml"}


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
def crd_validator(kind: str, version: str) -> jsonschema.Validator:
    crd = yaml.safe_load((GATEWAY_API / CRD_FILES[kind]).read_text())
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
        if obj["apiVersion"].startswith("gateway.networking.k8s.io/"):
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


def test_gateway_api_objects_pass_the_crd_schemas(runs):
    kinds = set()
    for stack, resource in rendered(runs):
        obj = resource.object
        if not obj["apiVersion"].startswith("gateway.networking.k8s.io/"):
            continue
        version = obj["apiVersion"].split("/")[1]
        errors = sorted(crd_validator(obj["kind"], version).iter_errors(obj), key=str)
        assert not errors, f"{stack} {resource.urn}: {errors[0].message} at {list(errors[0].path)}"
        # Their metadata is an ordinary ObjectMeta.
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBERNETES_VERSIONS[0], strict=True
        )
        kinds.add(obj["kind"])
    assert kinds == {"HTTPRoute", "Gateway"}


def test_the_crd_check_refuses_a_misspelt_field(runs):
    route = next(r.object for _, r in rendered(runs) if r.object["kind"] == "HTTPRoute")
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["prot"] = 8501
    assert list(crd_validator("HTTPRoute", "v1").iter_errors(broken))


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
