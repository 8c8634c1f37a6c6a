"""Real SavedModels: preprocessing in the graph, the contract read from the SignatureDef, requests
built from the contract, and TF-Serving's warmup records, each run through the signature."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from scripts.modelctl.contract import openapi_document
from scripts.modelctl.publish import prepare_savedmodel
from scripts.training import savedmodel
from scripts.training.recipes import recipe_for
from scripts.training.train import train
from tests.conftest import MANIFESTS
from tests.test_contract import columnar, schema_validator

BY_NAME = {m.name: m for m in MANIFESTS}
IRIS_ROW = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """iris 1 (the contract of the published versions 1-3), iris 4 (adds the optional unit input)
    and taxi-fare 1, trained once for the module."""
    out = tmp_path_factory.mktemp("exported")
    return {
        (model, version): train(BY_NAME[model], recipe_for(model), version, out).path
        for model, version in (("iris", 1), ("iris", 4), ("taxi-fare", 1))
    }


def test_the_recorded_contracts_are_what_the_training_code_exports(exported):
    for (model, version), path in exported.items():
        contract = savedmodel.read_contract(path, BY_NAME[model].serving.signature)
        if version in BY_NAME[model].versions:
            # Every published version of the manifests has the contract of the current code.
            for published in BY_NAME[model].versions.values():
                assert published.contract == contract, (model, version)
    unit = savedmodel.read_contract(exported[("iris", 4)], "serving_default").inputs["measurement_unit"]
    assert unit.model_dump(mode="json") == {"dtype": "string", "shape": [-1], "default": ["cm"]}


def test_raw_inputs_are_preprocessed_in_the_graph_and_outputs_are_readable(exported):
    iris = savedmodel.load_signature(exported[("iris", 4)], "serving_default")
    contract = savedmodel.read_contract(exported[("iris", 4)], "serving_default")
    in_cm = savedmodel.predict(iris, {"instances": [IRIS_ROW]}, contract)
    in_mm = {name: value * 10 for name, value in IRIS_ROW.items()} | {"measurement_unit": "mm"}
    assert savedmodel.predict(iris, {"instances": [in_mm]}, contract)["species"] == in_cm["species"] == ["virginica"]
    assert in_cm["classes"] == [["setosa", "versicolor", "virginica"]]
    assert abs(sum(in_cm["scores"][0]) - 1) < 1e-5

    taxi = savedmodel.load_signature(exported[("taxi-fare", 1)], "serving_default")
    taxi_contract = savedmodel.read_contract(exported[("taxi-fare", 1)], "serving_default")
    trip = {"distance_km": 5.2, "duration_min": 14.0, "hour": 9, "passengers": 1}
    fares = {
        zone: savedmodel.predict(taxi, {"instances": [trip | {"pickup_zone": zone}]}, taxi_contract)["fare_usd"][0]
        for zone in ("airport", "suburbs")
    }
    assert 10 < fares["suburbs"] < fares["airport"] < 40, fares  # the airport surcharge, learnt from the zone
    # An unknown zone is refused by the lookup in the graph, not scored.
    with pytest.raises(Exception, match="should be in vocabulary"):
        savedmodel.predict(taxi, {"instances": [trip | {"pickup_zone": "moon"}]}, taxi_contract)


@pytest.mark.parametrize("key", [("iris", 1), ("iris", 4), ("taxi-fare", 1)])
def test_a_request_built_from_the_contract_runs_through_the_savedmodel(exported, key):
    """The example request satisfies the OpenAPI document of the exported version, in the row and
    the columnar form; both run through the SavedModel, and the answers satisfy the response schemas."""
    model, version = key
    manifest = BY_NAME[model]
    contract = savedmodel.read_contract(exported[key], manifest.serving.signature)
    versions = dict(manifest.versions)
    versions[version] = versions[min(versions)].model_copy(update={"contract": contract})
    document = openapi_document(manifest.model_copy(update={"versions": versions}), version)
    signature = savedmodel.load_signature(exported[key], manifest.serving.signature)
    row = manifest.serving.example_request
    for body, form in ((row, "Row"), (columnar(row), "Columnar")):
        schema_validator(document, "PredictRequest").validate(body)
        outputs = savedmodel.predict(signature, body, contract)
        assert set(outputs) == set(contract.outputs)
        # The response TF-Serving builds from these tensors (api_rest.md, "Response format").
        if form == "Row":
            rows = [{name: outputs[name][i] for name in outputs} for i in range(len(row["instances"]))]
            response = {"predictions": rows if len(outputs) > 1 else next(iter(outputs.values()))}
        else:
            response = {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}
        schema_validator(document, f"{form}PredictResponse").validate(response)


@pytest.mark.parametrize("key", [("iris", 4), ("taxi-fare", 1)])
def test_publish_writes_warmup_records_that_parse_and_run_through_the_signature(exported, tmp_path, key):
    model, _ = key
    manifest = BY_NAME[model]
    if model == "iris":  # two instances: the whole request and each instance alone
        example = {"instances": [IRIS_ROW, {**IRIS_ROW, "sepal_length": 5.0}]}
        manifest = manifest.model_copy(
            update={"serving": manifest.serving.model_copy(update={"example_request": example})}
        )
    directory = tmp_path / "savedmodel"
    shutil.copytree(exported[key], directory)
    contract = prepare_savedmodel(manifest, directory)
    assert (directory / "assets.extra" / "tf_serving_warmup_requests").is_file()

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = savedmodel.read_warmup(directory)
    assert all(isinstance(log, prediction_log_pb2.PredictionLog) for log in logs)
    instances = manifest.serving.example_request["instances"]
    assert len(logs) == (1 if len(instances) == 1 else 1 + len(instances)) <= savedmodel.WARMUP_MAX_RECORDS
    # Reloaded, the SavedModel (with its warmup asset) serves every record through its signature.
    signature = tf.saved_model.load(str(directory)).signatures[manifest.serving.signature]
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == model
        assert request.model_spec.signature_name == manifest.serving.signature
        tensors = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        for name, tensor in contract.inputs.items():
            if name not in tensors:
                tensors[name] = tf.constant(tensor.default)  # TF-Serving feeds the SignatureDef default
        outputs = signature(**tensors)
        assert set(outputs) == set(contract.outputs)
        batch = len(tensors[contract.required_inputs()[0]])
        assert all(value.shape[0] == batch for value in outputs.values())


def test_publish_refuses_an_example_the_savedmodel_fails_on(exported, tmp_path):
    manifest = BY_NAME["taxi-fare"]
    example = copy.deepcopy(manifest.serving.example_request)
    example["instances"][0]["pickup_zone"] = "moon"
    manifest = manifest.model_copy(update={"serving": manifest.serving.model_copy(update={"example_request": example})})
    directory = tmp_path / "savedmodel"
    shutil.copytree(exported[("taxi-fare", 1)], directory)
    with pytest.raises(savedmodel.SavedModelError, match="fail to load the version while warming up"):
        prepare_savedmodel(manifest, directory)
    assert not (directory / "assets.extra").exists()


def test_publish_refuses_an_example_outside_the_contract(exported, tmp_path):
    manifest = BY_NAME["taxi-fare"]
    example = {"instances": [{"distance_km": 3.0}]}
    manifest = manifest.model_copy(update={"serving": manifest.serving.model_copy(update={"example_request": example})})
    directory = tmp_path / "savedmodel"
    shutil.copytree(exported[("taxi-fare", 1)], directory)
    with pytest.raises(savedmodel.SavedModelError, match=r"serving\.example_request does not fit the contract"):
        prepare_savedmodel(manifest, directory)
