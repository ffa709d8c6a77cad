"""Server reflection under both names: `grpc.reflection.v1` (what current grpcurl and grpc-java ask
for first) and `grpc.reflection.v1alpha`.

grpcio-reflection (1.85) implements only v1alpha. The two protocols are the same messages under
another package, byte for byte on the wire, so the v1alpha servicer answers the v1 method too; the
v1 descriptor (v1alpha's, renamed) is added to the default pool so that clients can describe the
v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["REFLECTION_SERVICES", "V1_SERVICE_NAME", "enable_reflection"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES: tuple[str, str] = (V1_SERVICE_NAME, reflection.SERVICE_NAME)
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor() -> None:
    """Add grpc/reflection/v1/reflection.proto (v1alpha's, renamed) to the default pool, once."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = _renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type)
            method.output_type = _renamed(method.output_type)
    pool.Add(proto)


def _renamed(type_name: str) -> str:
    return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")


def enable_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection (v1 and v1alpha) listing `service_names` and the reflection services."""
    _register_v1_descriptor()
    servicer = reflection.ReflectionServicer((*service_names, *REFLECTION_SERVICES))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for name in REFLECTION_SERVICES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )
