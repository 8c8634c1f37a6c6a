"""A local gRPC server implementing TF-Serving's PredictionService (tensorflow-serving-api's
generated servicer, grpcio), for `modelctl smoke`'s gRPC Predict."""

from __future__ import annotations

from concurrent import futures

import grpc
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from infra.spec.manifest import ModelManifest


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers Predict for `manifests` with empty tensors named like each stable contract's outputs;
    refuses an unknown model, an input the contract lacks, or a model in `failing`."""

    def __init__(self, manifests: dict[str, ModelManifest], failing: frozenset[str] = frozenset()):
        self.manifests = manifests
        self.failing = failing
        self.requests: list[predict_pb2.PredictRequest] = []

    def Predict(self, request, context):  # noqa: N802 (the proto's method name)
        self.requests.append(request)
        manifest = self.manifests.get(request.model_spec.name)
        if manifest is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")
        if request.model_spec.name in self.failing:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature")
        version = max(manifest.versions)
        contract = manifest.versions[version].contract
        unknown = set(request.inputs) - set(contract.inputs)
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Sent extra: {sorted(unknown)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        for name in contract.outputs:
            response.outputs[name].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT))
        return response


class FakeGrpcServer:
    def __init__(self, service: FakePredictionService):
        self.service = service
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)
