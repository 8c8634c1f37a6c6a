"""Train an example model, evaluate it on the held-out split and export a SavedModel (imports TensorFlow)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from infra.spec.manifest import ModelManifest
from scripts.training.recipes import SPLIT_SEED, TEST_FRACTION, Recipe

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


def train(manifest: ModelManifest, recipe: Recipe, version: int, out_dir: Path) -> TrainedVersion:
    """Train version `version` and export it to `out_dir/<model>/<version>/` with its signature."""
    target = out_dir / manifest.name / str(version)
    if target.exists():
        raise TrainingError(f"{target} exists; a trained version is never overwritten")
    tf = _quiet_tensorflow()
    import keras
    import numpy as np

    features, labels = recipe.load()
    x = np.asarray(features, dtype="float32")
    y = np.asarray(labels, dtype="float32")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    test_size = max(1, int(len(x) * TEST_FRACTION))
    test, train_rows = order[:test_size], order[test_size:]

    keras.utils.set_random_seed(version)
    normalizer = keras.layers.Normalization()
    normalizer.adapt(x[train_rows])
    layers = [keras.Input((len(recipe.features),)), normalizer]
    layers += [keras.layers.Dense(units, activation="relu") for units in recipe.hidden_units]
    if recipe.is_classifier:
        layers.append(keras.layers.Dense(len(recipe.classes), activation="softmax"))
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        layers.append(keras.layers.Dense(1))
        loss, metrics = "mse", ["mae"]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=metrics)
    epochs = recipe.epochs(version)
    model.fit(x[train_rows], y[train_rows], epochs=epochs, batch_size=32, verbose=0)

    predictions = model.predict(x[test], verbose=0)
    if recipe.is_classifier:
        accuracy = float(np.mean(np.argmax(predictions, axis=1) == y[test]))
        evaluation = {"accuracy": round(accuracy, 4)}
    else:
        errors = predictions[:, 0] - y[test]
        evaluation = {
            "mae": round(float(np.mean(np.abs(errors))), 4),
            "rmse": round(float(np.sqrt(np.mean(errors**2))), 4),
        }

    staging = target.with_name(f".{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    _export(tf, model, recipe, manifest.serving.signature, staging)
    (staging / METRICS_FILE).write_text(json.dumps(evaluation, indent=2, sort_keys=True) + "\n")
    card = manifest.card.model_dump(exclude_none=True) | {
        "model": manifest.name,
        "version": version,
        "features": list(recipe.features),
        "label": recipe.label,
        "training_rows": len(train_rows),
        "evaluation_rows": len(test),
        "epochs": epochs,
        "seed": version,
        "tensorflow": tf.__version__,
    }
    (staging / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    staging.rename(target)  # the version directory appears complete or not at all
    return TrainedVersion(target, evaluation)


def _export(tf, model, recipe: Recipe, signature_name: str, path: Path) -> None:
    """SavedModel whose signature takes one float32 vector per feature, named after it, so a
    TF-Serving REST request is `{"instances": [{"<feature>": value, ...}]}`."""

    class Exported(tf.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

    exported = Exported(model)
    specs = [tf.TensorSpec([None], tf.float32, name=name) for name in recipe.features]

    if recipe.is_classifier:
        class_names = tf.constant(list(recipe.classes))

        @tf.function(input_signature=specs)
        def serve(*columns):
            probabilities = exported.network(tf.stack(columns, axis=1))
            class_id = tf.argmax(probabilities, axis=1)
            return {"probabilities": probabilities, "class_id": class_id, "class": tf.gather(class_names, class_id)}

    else:

        @tf.function(input_signature=specs)
        def serve(*columns):
            return {recipe.label: exported.network(tf.stack(columns, axis=1))[:, 0]}

    exported.serve = serve
    tf.saved_model.save(exported, str(path), signatures={signature_name: serve})
