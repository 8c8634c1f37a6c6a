"""TF-Serving configuration files (text protos) and the server's command line.

The files are written in protobuf text format by this module, so the program needs neither
TensorFlow nor tensorflow-serving-api (whose package depends on TensorFlow): `pulumi install`
stays lean. The tests parse every file with TF-Serving's own protos (ModelServerConfig from
tensorflow-serving-api; MonitoringConfig and BatchingParameters compiled from its .proto
sources) and compare with what `text_format` prints for the same message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from infra.spec.manifest import Batching, ServedModel

GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_DIR = "/etc/tfserving"
MODELS_ROOT = "/models"
MODELS_CONFIG = "models.config"
MONITORING_CONFIG = "monitoring.config"
BATCHING_CONFIG = "batching.config"
FETCH_SCRIPT = "fetch-models.sh"
FETCH_POOL_SCRIPT = "fetch-pool.sh"
FETCH_LIST = "fetch.list"
# Default path of PrometheusExporter (tensorflow_serving/util/prometheus_exporter.cc).
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
SERVER_BINARY = "/usr/bin/tensorflow_model_server"


def model_base_path(model_name: str) -> str:
    """Where the init container puts the versions and the server reads them: <root>/<model>/<version>/."""
    return f"{MODELS_ROOT}/{model_name}"


def _text(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def models_config(model: ServedModel) -> str:
    """`models.config`: a ModelServerConfig serving exactly the labelled versions of one model,
    byte for byte what `text_format.MessageToString` prints for it (a test holds it to that)."""
    return models_config_list([model])


def models_config_list(models: Sequence[ServedModel]) -> str:
    """`models.config` of a server that serves several models (a serving pool), in the given
    order: one `config` entry each, with its own base path, versions and labels."""
    return "model_config_list {\n" + "".join(_model_entry(model) for model in models) + "}\n"


def _model_entry(model: ServedModel) -> str:
    # `specific` loads exactly these versions; the default (`latest`) would serve whatever
    # directory sorts highest, which is not what the manifest says. Map entries print in key
    # order, as text_format prints maps.
    versions = "".join(f"        versions: {version}\n" for version in model.served_versions)
    labels = "".join(
        f"    version_labels {{\n      key: {_text(label)}\n      value: {version}\n    }}\n"
        for label, version in sorted(model.version_labels.items())
    )
    return (
        "  config {\n"
        f"    name: {_text(model.name)}\n"
        f"    base_path: {_text(model_base_path(model.name))}\n"
        '    model_platform: "tensorflow"\n'
        "    model_version_policy {\n"
        "      specific {\n"
        f"{versions}"
        "      }\n"
        "    }\n"
        f"{labels}"
        "  }\n"
    )


def monitoring_config() -> str:
    """`monitoring.config`: a MonitoringConfig text proto enabling Prometheus on the REST port.

    tensorflow-serving-api does not ship monitoring_config_pb2, so this is written in the
    proto's text format directly; tests parse it against monitoring_config.proto.
    """
    return f'prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_PATH}"\n}}\n'


def batching_config(batching: Batching) -> str:
    """`batching.config`: a BatchingParameters text proto (session_bundle_config.proto).

    The wrapper fields (`google.protobuf.Int64Value`) take `{ value: N }`.
    """
    fields = {
        "max_batch_size": batching.max_batch_size,
        "batch_timeout_micros": batching.batch_timeout_micros,
        "max_enqueued_batches": batching.max_enqueued_batches,
        "num_batch_threads": batching.num_batch_threads,
    }
    return "".join(f"{name} {{ value: {value} }}\n" for name, value in fields.items())


def config_files(model: ServedModel, fetch_script: str) -> dict[str, str]:
    """Every file of the model's ConfigMap, by file name."""
    files = {
        MODELS_CONFIG: models_config(model),
        MONITORING_CONFIG: monitoring_config(),
        FETCH_SCRIPT: fetch_script,
    }
    if model.serving.batching is not None:
        files[BATCHING_CONFIG] = batching_config(model.serving.batching)
    return files


def content_hash(files: Mapping[str, str]) -> str:
    """A short digest of the config files, stamped on the pod template so any change rolls the pods."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:16]


def server_args(model: ServedModel) -> list[str]:
    """Arguments of `tensorflow_model_server` (flags from tensorflow_serving/model_servers/main.cc)."""
    return server_args_with(model.serving.batching)


def server_args_with(batching: Batching | None) -> list[str]:
    """The server's arguments; `batching` applies to every model of the process."""
    args = [
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={CONFIG_DIR}/{MODELS_CONFIG}",
        f"--monitoring_config_file={CONFIG_DIR}/{MONITORING_CONFIG}",
        # The config is a file in an immutable ConfigMap: a change is a new pod, never a reload.
        "--model_config_file_poll_wait_seconds=0",
        # server_core.cc assigns version labels before the first load completes
        # (UpdateModelVersionLabelMap runs ahead of AddModelsViaModelConfigList), so without
        # this flag a labelled config makes the server refuse to start.
        "--allow_version_labels_for_unavailable_models=true",
    ]
    if batching is not None:
        args += ["--enable_batching=true", f"--batching_parameters_file={CONFIG_DIR}/{BATCHING_CONFIG}"]
    return args
