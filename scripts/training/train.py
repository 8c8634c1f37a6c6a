"""Train a model from its Recipe, evaluate it and export a SavedModel (imports TensorFlow).

The pattern every model follows; a model only declares a `Recipe` in its training entrypoint
(recipes.py), and this module does the rest:

1. **Raw inputs.** The serving signature takes each feature as a client has it, one tensor
   per feature named after it, batch first: `float32` numbers, `int64` integers, `string`
   categories. A TF-Serving REST request is then
   `{"instances": [{"distance_km": 5.2, "hour": 9, "pickup_zone": "downtown", ...}]}`.
2. **Preprocessing layers, adapted on the training rows only**: `Normalization` for numbers
   and integers, `StringLookup` (one-hot; a value outside the vocabulary is refused, not
   guessed) for categories; an optional unit input converts measurements first.
3. **Training** runs the network on the preprocessed training rows (preprocessing runs once,
   outside the gradient loop, so a version trains in seconds).
4. **Export** chains preprocessing -> network -> postprocessing in one `tf.function`, the
   serving signature. What TF-Serving runs is exactly what was trained and evaluated (no client
   library re-implements the preprocessing, so nothing can skew), and the outputs are readable:
   class names with their scores (`species`, `classes`, `scores`), or the value in the label's
   unit (`fare_usd`).
5. **Optional inputs carry a default** in the signature (SignatureDef `defaults`): TF-Serving
   feeds it when a request omits the input, so adding one is a compatible contract change
   (`modelctl plan` compares contracts; scripts/modelctl/contract.py).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.spec.manifest import ModelManifest
from scripts.training.data_source import DataFile, TrainingData, read_training_data
from scripts.training.recipes import SPLIT_SEED, TEST_FRACTION, Kind, Recipe, UnitInput

REPOSITORY = Path(__file__).resolve().parents[2]

METRICS_FILE = "metrics.json"
MODEL_CARD_FILE = "model_card.json"


class TrainingError(Exception):
    """Training could not produce a version (the output exists, the data is unusable, ...)."""


@dataclass(frozen=True)
class TrainedVersion:
    path: Path
    metrics: dict[str, float]


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def read_rows(recipe: Recipe, files: tuple[DataFile, ...] | list[DataFile]) -> tuple[dict[str, list], list[float]]:
    """The feature columns and labels of every file, concatenated."""
    columns: dict[str, list] = {feature.name: [] for feature in recipe.features}
    labels: list[float] = []
    for data_file in files:
        part, part_labels = recipe.parse(data_file.text, data_file.uri)
        for name, values in part.items():
            columns[name] += values
        labels += part_labels
    return columns, labels


def train(
    manifest: ModelManifest,
    recipe: Recipe,
    version: int,
    out_dir: Path,
    data: TrainingData | None = None,
    evaluation: DataFile | None = None,
    seed: int | None = None,
    parameters: dict[str, Any] | None = None,
    target: Path | None = None,
) -> TrainedVersion:
    """Train version `version` and export it to `out_dir/<model>/<version>/` (or `target`).

    Without `evaluation` (`modelctl train`), a held-out split of the data is the test set and
    later versions train longer (Recipe.epochs_for). With the frozen evaluation set (`modelctl
    retrain`), every data row trains except rows also in the set, and the metrics are those of
    the exported SavedModel on the set (scripts/training/evaluate.py), as for the champion.
    """
    target = target or out_dir / manifest.name / str(version)
    if target.exists():
        raise TrainingError(f"{target} exists; a trained version is never overwritten")
    data = data or read_training_data(REPOSITORY, manifest, None)
    tf = _quiet_tensorflow()
    import keras
    import numpy as np

    columns, labels = read_rows(recipe, data.files)
    if not labels:
        raise TrainingError(f"{data.source}: no rows to train on")
    y = np.asarray(labels, dtype="float32")
    excluded = 0
    if evaluation is None:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        test_size = max(1, int(len(y) * TEST_FRACTION))
        test, train_rows = order[:test_size], order[test_size:]
        epochs = recipe.epochs_for(version)
        seed = version if seed is None else seed
    else:
        # A row of the frozen set never trains a candidate: its metric would flatter it.
        held = set(_row_keys(recipe, *read_rows(recipe, [evaluation])))
        keys = _row_keys(recipe, columns, labels)
        train_rows = np.asarray([i for i, key in enumerate(keys) if key not in held], dtype="int64")
        excluded = len(y) - len(train_rows)
        test = np.asarray([], dtype="int64")
        epochs = recipe.epochs
        seed = version if seed is None else seed
        if not len(train_rows):
            raise TrainingError(f"{data.source}: every row is also in the evaluation set")

    keras.utils.set_random_seed(seed)
    unit = recipe.unit_for(version)
    raw = {name: np.asarray(values, dtype=_numpy_dtype(recipe, name)) for name, values in columns.items()}
    if unit is not None:
        # The training data is in the reference unit.
        raw[unit.name] = np.full(len(y), unit.default, dtype=object)
    training = {name: column[train_rows] for name, column in raw.items()}
    preprocessing = _preprocessing_module(tf, keras, recipe, unit, training)
    x = preprocessing({name: tf.constant(column) for name, column in raw.items()}).numpy()

    network = keras.Sequential(
        [keras.Input((x.shape[1],))] + [keras.layers.Dense(units, activation="relu") for units in recipe.hidden_units]
    )
    if recipe.is_classifier:
        network.add(keras.layers.Dense(len(recipe.classes), activation="softmax"))
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        network.add(keras.layers.Dense(1))
        loss, metrics = "mse", ["mae"]
    network.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss=loss, metrics=metrics)
    network.fit(x[train_rows], y[train_rows], epochs=epochs, batch_size=recipe.batch_size, verbose=0)

    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    _export(tf, preprocessing, network, recipe, unit, manifest.serving.signature, staging)
    if evaluation is None:
        predictions = network.predict(x[test], verbose=0)
        evaluation_metrics = _metrics(np, recipe, predictions, y[test])
        evaluation_rows = len(test)
    else:
        from scripts.training.evaluate import evaluate_savedmodel

        evaluation_metrics = evaluate_savedmodel(staging, manifest.serving.signature, recipe, evaluation)
        evaluation_rows = len(read_rows(recipe, [evaluation])[1])
    (staging / METRICS_FILE).write_text(json.dumps(evaluation_metrics, indent=2, sort_keys=True) + "\n")
    card = manifest.card.model_dump(exclude_none=True) | {
        "model": manifest.name,
        "version": version,
        "features": {feature.name: feature.kind.value for feature in recipe.features},
        "label": recipe.label,
        "training_rows": len(train_rows),
        "evaluation_rows": evaluation_rows,
        "epochs": epochs,
        "seed": seed,
        "tensorflow": tf.__version__,
        "data": _provenance(recipe, data, excluded),
    }
    if parameters:
        card["parameters"] = parameters
    if evaluation is not None:
        card["evaluation_set"] = evaluation.provenance() | {"rows": evaluation_rows}
    if unit is not None:
        card["unit_input"] = {"name": unit.name, "units": list(unit.factors), "default": unit.default}
    (staging / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    staging.rename(target)  # the version directory appears complete or not at all
    return TrainedVersion(target, evaluation_metrics)


def _metrics(np, recipe: Recipe, predictions, truth) -> dict[str, float]:
    if recipe.is_classifier:
        return {"accuracy": round(float(np.mean(np.argmax(predictions, axis=1) == truth)), 4)}
    errors = predictions[:, 0] - truth
    return {
        "mae": round(float(np.mean(np.abs(errors))), 4),
        "rmse": round(float(np.sqrt(np.mean(errors**2))), 4),
    }


def _row_keys(recipe: Recipe, columns: dict[str, list], labels: list[float]) -> list[tuple]:
    names = [feature.name for feature in recipe.features]
    return list(zip(*(columns[n] for n in names), labels, strict=True))


def _provenance(recipe: Recipe, data: TrainingData, excluded: int) -> dict[str, Any]:
    """The model card's record of what trained it: each file with its identity and row count."""
    files = [f.provenance() | {"rows": len(recipe.parse(f.text, f.uri)[1])} for f in data.files]
    record: dict[str, Any] = {"source": data.source, "files": files}
    if data.partition:
        record["partition"] = data.partition
    if excluded:
        record["rows_also_in_the_evaluation_set"] = excluded
    return record


def _numpy_dtype(recipe: Recipe, name: str) -> Any:
    kind = next(feature.kind for feature in recipe.features if feature.name == name)
    return {Kind.number: "float32", Kind.integer: "int64", Kind.category: object}[kind]


def _signature_dtype(tf, kind: Kind):
    return {Kind.number: tf.float32, Kind.integer: tf.int64, Kind.category: tf.string}[kind]


def _preprocessing_module(tf, keras, recipe: Recipe, unit: UnitInput | None, training: dict[str, Any]):
    """A tf.Module mapping raw feature tensors to the network's input matrix, its layers adapted
    on `training` (the training rows only). Built here because TensorFlow is imported lazily."""

    class Preprocessing(tf.Module):
        def __init__(self):
            super().__init__(name="preprocessing")
            self.scaled = [f.name for f in recipe.features if f.kind in (Kind.number, Kind.integer)]
            self.measured = [f.kind is Kind.number for f in recipe.features if f.name in self.scaled]
            self.categories = [f.name for f in recipe.features if f.kind is Kind.category]
            if unit is not None:
                self.unit_lookup = keras.layers.StringLookup(vocabulary=list(unit.factors), num_oov_indices=0)
                self.unit_factors = tf.constant(list(unit.factors.values()), dtype=tf.float32)
            self.normalization = keras.layers.Normalization(axis=-1)
            self.normalization.adapt(self._numbers(training))
            # num_oov_indices=0: a category the training data never had fails the request
            # ("all inputs should be in vocabulary") instead of being scored as noise.
            self.lookups = []
            for name in self.categories:
                lookup = keras.layers.StringLookup(output_mode="one_hot", num_oov_indices=0)
                lookup.adapt(training[name])
                self.lookups.append(lookup)

        def _numbers(self, features):
            columns = [tf.cast(features[name], tf.float32) for name in self.scaled]
            if unit is not None:
                # A default is one value for the whole batch (TF-Serving feeds it as given).
                units = tf.broadcast_to(features[unit.name], tf.shape(columns[0]))
                factor = tf.gather(self.unit_factors, self.unit_lookup(units))
                columns = [c * factor if measured else c for c, measured in zip(columns, self.measured, strict=True)]
            return tf.stack(columns, axis=1)

        def __call__(self, features):
            parts = [self.normalization(self._numbers(features))]
            parts += [lookup(features[name]) for name, lookup in zip(self.categories, self.lookups, strict=True)]
            return tf.concat([tf.cast(part, tf.float32) for part in parts], axis=1)

    return Preprocessing()


def _export(tf, preprocessing, network, recipe: Recipe, unit: UnitInput | None, signature_name: str, path: Path):
    """SavedModel whose signature is preprocessing -> network -> readable outputs, one input per feature."""

    class Exported(tf.Module):
        def __init__(self):
            super().__init__()
            self.preprocessing = preprocessing
            self.network = network

    exported = Exported()
    specs = [tf.TensorSpec([None], _signature_dtype(tf, f.kind), name=f.name) for f in recipe.features]
    parameters = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in recipe.features]
    if unit is not None:
        specs.append(tf.TensorSpec([None], tf.string, name=unit.name))
        # tf.saved_model.save records a Python default as the SignatureDef's `defaults` entry
        # (tensorflow/python/saved_model/signature_serialization.py, save.py `_generate_signatures`).
        parameters.append(
            inspect.Parameter(unit.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=tf.constant([unit.default]))
        )
    signature = inspect.Signature(parameters)
    class_names = tf.constant(list(recipe.classes or ()))

    def serve(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        outputs = exported.network(exported.preprocessing(bound.arguments))
        if not recipe.is_classifier:
            return {recipe.output: outputs[:, 0]}
        batch = tf.shape(outputs)[0]
        return {
            recipe.label: tf.gather(class_names, tf.argmax(outputs, axis=1)),
            # TF-Serving's classify convention: every class name with its score.
            "classes": tf.tile(class_names[tf.newaxis, :], [batch, 1]),
            "scores": outputs,
        }

    # tf.function reads the parameter names (and the default) from __signature__.
    serve.__signature__ = signature
    function = tf.function(serve, input_signature=specs)
    exported.serve = function
    tf.saved_model.save(exported, str(path), signatures={signature_name: function})
