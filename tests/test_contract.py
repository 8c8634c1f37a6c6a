"""A version's contract: OpenAPI documents, example requests, contract diffs and the production rule."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate as validate_openapi

from infra.spec.manifest import Contract
from scripts.modelctl.cli import main
from scripts.modelctl.contract import check_request, compare, openapi_document
from tests.conftest import MANIFESTS, edit_yaml
from tests.test_plan import PLAN_SCHEMA, git, plan, repo  # noqa: F401  (repo is a fixture)

VERSIONS = [(m.name, v) for m in MANIFESTS for v, published in m.versions.items() if published.contract]
BY_NAME = {m.name: m for m in MANIFESTS}


def schema_validator(document: dict, name: str) -> jsonschema.Validator:
    """A component of an OpenAPI 3.1 document as a JSON Schema 2020-12 validator (3.1's dialect)."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def columnar(body: dict) -> dict:
    """The columnar (`inputs`) form of a row request."""
    names = list(body["instances"][0])
    return {"inputs": {name: [row[name] for row in body["instances"]] for name in names}}


# OpenAPI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "version"), VERSIONS)
def test_the_openapi_document_of_every_recorded_contract_is_valid(model, version):
    document = openapi_document(BY_NAME[model], version, [("https://models.example.com", "stack prod")])
    validate_openapi(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"] == "3.1.0"
    paths = set(document["paths"])
    base = f"/v1/models/{model}"
    assert paths == {
        f"{base}/versions/{version}:predict",
        f"{base}/labels/{{label}}:predict",
        f"{base}/versions/{version}",
        f"{base}/labels/{{label}}",
        f"{base}/versions/{version}/metadata",
        f"{base}/labels/{{label}}/metadata",
    }
    schemas = document["components"]["schemas"]
    assert {"RowPredictRequest", "ColumnarPredictRequest", "RowPredictResponse", "ColumnarPredictResponse"} <= set(
        schemas
    )


@pytest.mark.parametrize("model", sorted(BY_NAME))
def test_the_example_request_satisfies_the_contract_in_both_forms(model):
    manifest = BY_NAME[model]
    example = manifest.serving.example_request
    served = {v for env in manifest.environments.values() for v in env.labels().values()}
    for version in served:
        document = openapi_document(manifest, version)
        schema_validator(document, "PredictRequest").validate(example)
        schema_validator(document, "PredictRequest").validate(columnar(example))
        assert check_request(manifest.versions[version].contract, manifest.serving.signature, example) == []


def test_requests_that_break_the_contract_are_refused():
    manifest = BY_NAME["taxi-fare"]
    contract, signature = manifest.versions[3].contract, manifest.serving.signature
    good = manifest.serving.example_request["instances"][0]
    cases = {
        "instances[0].hour": {"instances": [good | {"hour": "nine"}]},
        "instances[0]": {"instances": [{k: v for k, v in good.items() if k != "pickup_zone"}]},
        "instances[0] extra": {"instances": [good | {"tip": 2.0}]},
        "inputs.passengers[0]": {"inputs": columnar({"instances": [good]})["inputs"] | {"passengers": [1.5]}},
        "signature_name": {"signature_name": "predict", "instances": [good]},
    }
    for where, body in cases.items():
        problems = check_request(contract, signature, body)
        assert problems and problems[0][0] == where.split()[0], (where, problems)
    same_inputs = {"instances": [good, {**good, "hour": 3}]}
    assert check_request(contract, signature, same_inputs) == []
    # TF-Serving reads one tensor per input: every instance names the same inputs (util/json_tensor.cc).
    optional = Contract.model_validate({"inputs": {"a": F, "unit": S | {"default": ["cm"]}}, "outputs": {"y": F}})
    mixed = {"instances": [{"a": 1.0}, {"a": 2.0, "unit": "mm"}]}
    assert check_request(optional, "serving_default", mixed) == [
        ("instances[1]", "names other inputs than instances[0]; all must name the same")
    ]
    both = {"instances": [good], "inputs": {}}
    assert "both" in check_request(contract, signature, both)[0][1]


def test_validate_names_the_file_and_field_of_an_example_that_breaks_the_contract(project, capsys):
    edit_yaml(
        project / "models" / "taxi-fare.yaml",
        lambda d: d["serving"]["example_request"]["instances"][0].update({"pickup_zone": 3}),
    )
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "1 error(s)"
    assert err[0].startswith("models/taxi-fare.yaml: serving.example_request.instances[0].pickup_zone: 3 is not valid")
    assert "(the contract of served versions 2, 3)" in err[0]


def test_contract_command_prints_the_document_and_refuses_a_version_without_one(project, capsys):
    assert main(["--root", str(project), "contract", "iris", "--version", "2"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    validate_openapi(document)
    assert document["info"]["version"] == "2"
    assert {s["url"] for s in document["servers"]} >= {"https://models.example.com", "https://models.localtest.me"}
    edit_yaml(project / "models" / "iris.yaml", lambda d: d["versions"][1].pop("contract"))
    assert main(["--root", str(project), "contract", "iris", "--version", "1"]) == 1
    assert "models/iris.yaml: versions.1.contract: not recorded" in capsys.readouterr().err


# Contract diffs -----------------------------------------------------------------------------------


def contract(inputs: dict, outputs: dict) -> Contract:
    return Contract.model_validate({"inputs": inputs, "outputs": outputs})


F = {"dtype": "float32", "shape": [-1]}
S = {"dtype": "string", "shape": [-1]}
BASE = contract({"a": F, "b": F}, {"label": S, "score": F})


def kinds(old: Contract, new: Contract) -> list[tuple[str, bool]]:
    return [(change.kind, change.breaking) for change in compare(old, new)]


def test_identical_contracts_have_no_changes():
    assert compare(BASE, copy.deepcopy(BASE)) == []


def test_an_added_input_with_a_default_is_compatible():
    new = contract({"a": F, "b": F, "unit": S | {"default": ["cm"]}}, {"label": S, "score": F})
    assert kinds(BASE, new) == [("input-added", False)]


def test_an_input_that_gains_a_default_is_compatible_and_losing_it_breaks():
    optional = contract({"a": F, "b": F | {"default": [0.0]}}, {"label": S, "score": F})
    assert kinds(BASE, optional) == [("input-changed", False)]
    assert kinds(optional, BASE) == [("input-changed", True)]


def test_an_added_output_is_compatible():
    new = contract({"a": F, "b": F}, {"label": S, "score": F, "scores": {"dtype": "float32", "shape": [-1, 3]}})
    assert kinds(BASE, new) == [("output-added", False)]


def test_an_added_input_without_a_default_breaks():
    new = contract({"a": F, "b": F, "c": S}, {"label": S, "score": F})
    assert kinds(BASE, new) == [("input-added", True)]


def test_a_removed_input_breaks():
    new = contract({"a": F, "c": S | {"default": ["x"]}}, {"label": S, "score": F})
    assert ("input-removed", True) in kinds(BASE, new)


def test_a_renamed_input_breaks():
    new = contract({"a": F, "b2": F}, {"label": S, "score": F})
    changes = compare(BASE, new)
    assert [(c.kind, c.breaking) for c in changes] == [("input-renamed", True)]
    assert str(changes[0]) == "input `b` renamed to `b2` (same dtype and shape)"


def test_a_changed_dtype_breaks():
    new = contract({"a": {"dtype": "float64", "shape": [-1]}, "b": F}, {"label": S, "score": F})
    assert kinds(BASE, new) == [("input-changed", True)]
    new = contract({"a": F, "b": F}, {"label": {"dtype": "int64", "shape": [-1]}, "score": F})
    assert kinds(BASE, new) == [("output-changed", True)]


def test_a_changed_shape_breaks():
    new = contract({"a": {"dtype": "float32", "shape": [-1, 2]}, "b": F}, {"label": S, "score": F})
    assert kinds(BASE, new) == [("input-changed", True)]


def test_a_removed_output_breaks():
    new = contract({"a": F, "b": F}, {"label": S})
    assert ("output-removed", True) in kinds(BASE, new)


def test_going_from_one_output_to_two_changes_the_rest_response_and_breaks():
    one = contract({"a": F}, {"fare_usd": F})
    two = contract({"a": F}, {"fare_usd": F, "fare_eur": F})
    assert kinds(one, two) == [("outputs-form", True), ("output-added", False)]


# The plan and the production rule ----------------------------------------------------------------


def _iris_v3_without_scores(document):
    """Version 3 as if its export had dropped the `scores` output: a breaking change."""
    document["versions"][3]["contract"]["outputs"].pop("scores")


def test_prod_refuses_an_unacknowledged_breaking_bump_and_accepts_an_acknowledged_one(repo, capsys):  # noqa: F811
    edit_yaml(repo / "models" / "iris.yaml", _iris_v3_without_scores)
    git(repo, "commit", "-qam", "iris 3 as published")
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["prod"].update({"stable": 3}))
    code, _, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert code == 1
    assert err.startswith(
        "policy: stack prod: [mandatory] contract-compatibility: model iris: stable 2 → 3 breaks its clients in "
        "production: output `scores` removed (fix: "
    )
    assert "versions.3.breaking_change_acknowledged" in err

    reason = "scores dropped; the two callers read species only (checked with their owners)"
    edit_yaml(
        repo / "models" / "iris.yaml", lambda d: d["versions"][3].update({"breaking_change_acknowledged": reason})
    )
    code, out, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--format", "markdown")
    assert code == 0, err
    assert (
        "| `iris` | stable | 2 → 3 | **breaking (acknowledged)** | ⚠️ output `scores` removed<br>acknowledged: " in out
    )
    code, out, _ = plan(repo, capsys, "--stack", "prod", "--base", "HEAD", "--format", "json")
    document = yaml.safe_load(out)
    jsonschema.validate(document, PLAN_SCHEMA)
    (review,) = document["contractChanges"]
    assert review["verdict"] == "breaking (acknowledged)" and review["acknowledged"] == reason
    assert review["changes"] == [
        {"kind": "output-removed", "name": "scores", "breaking": True, "detail": "output `scores` removed"}
    ]


def test_a_breaking_bump_outside_production_is_shown_not_refused(repo, capsys):  # noqa: F811
    edit_yaml(repo / "models" / "iris.yaml", _iris_v3_without_scores)
    git(repo, "commit", "-qam", "iris 3 as published")
    edit_yaml(repo / "models" / "iris.yaml", lambda d: d["environments"]["staging"].update({"stable": 3}))
    code, out, err = plan(repo, capsys, "--stack", "staging", "--base", "HEAD")
    assert code == 0, err
    assert "  contract iris stable 2 → 3: breaking: output `scores` removed" in out.splitlines()


def test_a_compatible_bump_shows_its_contract_diff(repo, capsys):  # noqa: F811
    def add_version_4(document):
        version = copy.deepcopy(document["versions"][3])
        version["contract"]["inputs"]["measurement_unit"] = {"dtype": "string", "shape": [-1], "default": ["cm"]}
        document["versions"][4] = version
        document["environments"]["prod"]["stable"] = 4

    edit_yaml(repo / "models" / "iris.yaml", add_version_4)
    code, out, err = plan(repo, capsys, "--stack", "prod", "--base", "HEAD")
    assert code == 0, err
    assert (
        "  contract iris stable 2 → 4: compatible: input `measurement_unit` added, optional (default ['cm'])"
        in out.splitlines()
    )


def test_a_plan_without_a_base_compares_nothing(repo, capsys):  # noqa: F811
    code, out, _ = plan(repo, capsys, "--stack", "prod")
    assert code == 0 and "contract " not in out
