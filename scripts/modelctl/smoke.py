"""`modelctl smoke`: after a deployment, every model of the stack answers its REST status and one
predict, and, for models that expose gRPC, one gRPC `Predict`.

TF-Serving REST API (g3doc/api_rest.md): `GET /v1/models/<name>` returns
`{"model_version_status": [{"version", "state", "status"}]}`; `POST /v1/models/<name>:predict`
takes the manifest's `serving.example_request` and returns `{"predictions": ...}`. gRPC:
`tensorflow.serving.PredictionService/Predict` (apis/prediction_service.proto) with the same
example as a `PredictRequest`, through tensorflow-serving-api's stubs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from infra.model.routing import route_path
from infra.spec.manifest import ServedModel

AVAILABLE = "AVAILABLE"


@dataclass(frozen=True)
class Check:
    model: str
    check: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.model}: {self.check}: {self.detail}"


def _request(url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Accept", "application/json")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))
    except ValueError as exc:
        return -1, f"not JSON: {exc}"


def grpc_predict(model: ServedModel, target: str, timeout: float = 10.0, plaintext: bool = False) -> Check:
    """One `Predict` call with the example request at `target` (`host:port`; TLS unless `plaintext`)."""
    example = model.serving.example_request
    contract = model.manifest.versions[model.version_labels["stable"]].contract
    if example is None or contract is None:
        missing = "serving.example_request" if example is None else "a recorded contract of the stable version"
        return Check(model.name, "grpc predict", True, f"skipped: the manifest has no {missing}")
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from scripts.training.savedmodel import predict_request  # imports TensorFlow (tensor protos)

    request = predict_request(model.name, model.serving.signature, contract, example)
    channel = (
        grpc.insecure_channel(target) if plaintext else grpc.secure_channel(target, grpc.ssl_channel_credentials())
    )
    try:
        with channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    except grpc.RpcError as exc:
        detail = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
        return Check(model.name, "grpc predict", False, f"Predict at {target} failed: {detail[:200]}")
    missing = sorted(set(contract.outputs) - set(response.outputs))
    if missing:
        return Check(model.name, "grpc predict", False, f"Predict at {target} lacks outputs {', '.join(missing)}")
    version = response.model_spec.version.value
    return Check(
        model.name,
        "grpc predict",
        True,
        f"version {version}: outputs {', '.join(sorted(response.outputs))} at {target}",
    )


def status_url(base_url: str, model_name: str) -> str:
    return base_url.rstrip("/") + route_path(model_name)


def model_status(url: str, timeout: float = 10.0) -> tuple[dict[int, str] | None, str]:
    """`GET /v1/models/<name>`: the loaded versions and their states, or None and why not
    (unreachable, an HTTP error such as TF-Serving's 404 for a model it does not know, not JSON)."""
    status, body = _request(url, None, timeout)
    if status != 200 or not isinstance(body, dict):
        return None, f"GET {url} answered {status}: {str(body)[:200]}"
    states: dict[int, str] = {}
    for entry in body.get("model_version_status") or []:
        # TF-Serving writes the version as a string (an int64 in JSON, g3doc/api_rest.md).
        if isinstance(entry, dict) and str(entry.get("version", "")).isdigit():
            states[int(entry["version"])] = str(entry.get("state"))
    return states, ""


def smoke_model(model: ServedModel, base_url: str, timeout: float = 10.0) -> list[Check]:
    url = status_url(base_url, model.name)
    checks = []
    states, problem = model_status(url, timeout)
    expected = set(model.served_versions)
    if states is None:
        checks.append(Check(model.name, "status", False, problem))
    else:
        # A canary's versions may be served by another workload behind the same route.
        unavailable = {v: states.get(v) for v in expected if states.get(v) not in (AVAILABLE, None)}
        available = [v for v in expected if states.get(v) == AVAILABLE]
        if unavailable or not available:
            checks.append(Check(model.name, "status", False, f"versions not available: {unavailable or states}"))
        else:
            checks.append(Check(model.name, "status", True, f"version(s) {sorted(available)} AVAILABLE"))
    example = model.serving.example_request
    if example is None:
        checks.append(Check(model.name, "predict", True, "skipped: the manifest has no serving.example_request"))
        return checks
    status, body = _request(f"{url}:predict", example, timeout)
    if status != 200 or not isinstance(body, dict) or ("predictions" not in body and "outputs" not in body):
        checks.append(Check(model.name, "predict", False, f"POST {url}:predict answered {status}: {str(body)[:200]}"))
    else:
        count = len(body.get("predictions", body.get("outputs")) or [])
        checks.append(Check(model.name, "predict", True, f"{count} prediction(s)"))
    return checks
