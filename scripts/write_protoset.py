"""Writes infra/platform/protos/prediction_service.protoset: TF-Serving's PredictionService with
every file it imports, as a FileDescriptorSet, from the installed tensorflow-serving-api.

ghz in the Flagger load tester reads the descriptors from it (`ghz --protoset`; see
infra/platform/loadtester.py on reflection); tests/test_loadtester.py checks the committed file."""

from __future__ import annotations

import sys
from pathlib import Path

PROTOSET = Path(__file__).resolve().parents[1] / "infra" / "platform" / "protos" / "prediction_service.protoset"


def protoset_bytes() -> bytes:
    from google.protobuf import descriptor_pb2
    from tensorflow_serving.apis import prediction_service_pb2

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file_descriptor) -> None:
        if file_descriptor.name in files:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        files[file_descriptor.name] = proto

    add(prediction_service_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString(deterministic=True)


def main() -> int:
    PROTOSET.write_bytes(protoset_bytes())
    print(PROTOSET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
