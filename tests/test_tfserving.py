"""Generated TF-Serving configuration, parsed with TF-Serving's own protos."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from infra.model import tfserving
from infra.spec.manifest import Batching
from tests.conftest import shard_of
from tests.test_program import CONFIG_MAP, DEPLOYMENT, MODEL_X_STACK_X_TRACK, children, served

PROTOS = Path(__file__).parent / "protos"


@pytest.fixture(scope="module")
def extra_protos(tmp_path_factory):
    """monitoring_config / BatchingParameters, compiled from TF-Serving's .proto sources with protoc."""
    out = tmp_path_factory.mktemp("protos")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", *sources],
        check=True,
        cwd=PROTOS,
    )
    sys.path.insert(0, str(out))
    try:
        # The package name clashes with the installed tensorflow_serving; load by file.
        modules = {}
        for name in ("monitoring_config_pb2", "batching_parameters_pb2"):
            spec = importlib.util.spec_from_file_location(name, out / "tensorflow_serving" / "config" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[name] = module
        yield modules
    finally:
        sys.path.remove(str(out))


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_models_config_parses_as_model_server_config(runs, model, stack, track):
    served_model, _ = served(model, stack)
    data = children(runs[stack], model, track)[CONFIG_MAP].object["data"]
    config = text_format.Parse(data[tfserving.MODELS_CONFIG], model_server_config_pb2.ModelServerConfig())
    entries = {entry.name: entry for entry in config.model_config_list.config}
    # A pool's server serves every member; a model's, that model alone.
    shard = shard_of(model, stack) if track == "stable" else None
    assert sorted(entries) == sorted(shard.member_names if shard else [model])
    entry = entries[model]
    assert entry.base_path == f"/models/{model}"
    assert entry.model_platform == "tensorflow"
    version = served_model.version_labels[track]
    assert list(entry.model_version_policy.specific.versions) == [version]
    assert dict(entry.version_labels) == {track: version}


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_monitoring_and_batching_configs_parse_with_their_protos(runs, model, stack, track, extra_protos):
    served_model, _ = served(model, stack)
    data = children(runs[stack], model, track)[CONFIG_MAP].object["data"]
    monitoring = text_format.Parse(
        data[tfserving.MONITORING_CONFIG], extra_protos["monitoring_config_pb2"].MonitoringConfig()
    )
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == tfserving.PROMETHEUS_PATH
    # One server batches every model it serves alike: a pool as its stack setting says.
    shard = shard_of(model, stack) if track == "stable" else None
    batching = shard.pool.batching.as_batching() if shard and shard.pool.batching else None
    batching = batching if shard else served_model.serving.batching
    assert (tfserving.BATCHING_CONFIG in data) == (batching is not None)
    if batching is not None:
        parsed = text_format.Parse(
            data[tfserving.BATCHING_CONFIG], extra_protos["batching_parameters_pb2"].BatchingParameters()
        )
        assert parsed.max_batch_size.value == batching.max_batch_size
        assert parsed.batch_timeout_micros.value == batching.batch_timeout_micros
        assert parsed.num_batch_threads.value == batching.num_batch_threads
        assert parsed.max_enqueued_batches.value == batching.max_enqueued_batches


def test_batching_config_rejects_nothing_it_writes(extra_protos):
    text = tfserving.batching_config(Batching(max_batch_size=1, batch_timeout_micros=0))
    parsed = text_format.Parse(text, extra_protos["batching_parameters_pb2"].BatchingParameters())
    assert parsed.max_batch_size.value == 1 and parsed.HasField("batch_timeout_micros")


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_pod_template_carries_the_config_hash(runs, model, stack, track):
    kids = children(runs[stack], model, track)
    annotations = kids[DEPLOYMENT].object["spec"]["template"]["metadata"]["annotations"]
    assert annotations["model-serving.dev/config-hash"] == tfserving.content_hash(kids[CONFIG_MAP].object["data"])


@pytest.mark.parametrize(("model", "stack", "track"), MODEL_X_STACK_X_TRACK)
def test_models_config_is_what_tf_servings_proto_prints(model, stack, track):
    """The program writes models.config itself (no TensorFlow in `pulumi install`); it must be
    exactly the text TF-Serving's ModelServerConfig prints for the same message."""
    workload = served(model, stack)[0].track(track)
    expected = model_server_config_pb2.ModelServerConfig()
    entry = expected.model_config_list.config.add()
    entry.name = workload.name
    entry.base_path = tfserving.model_base_path(workload.name)
    entry.model_platform = "tensorflow"
    entry.model_version_policy.specific.versions.extend(workload.served_versions)
    for label, version in workload.version_labels.items():
        entry.version_labels[label] = version
    assert tfserving.models_config(workload) == text_format.MessageToString(expected)
