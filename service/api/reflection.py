"""Server reflection under both names clients ask for: `grpc.reflection.v1` (current grpcurl, Postman) and
`grpc.reflection.v1alpha` (older clients).

grpcio-reflection ships only v1alpha. The two protocols are one protocol: v1 is v1alpha's file with the
package renamed, every message, field number and type unchanged, so their bytes on the wire are the same.
One servicer therefore answers both paths with v1alpha's (de)serializers; v1's descriptor is added to the
pool (v1alpha's, renamed) so that a client describing the v1 service finds it too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from .boundary import Boundary

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
SERVICE_NAMES = (f"{V1}.ServerReflection", reflection.SERVICE_NAME)


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add `grpc/reflection/v1/reflection.proto` to `pool`, built from the v1alpha file (once per pool)."""
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = name, V1
    proto.ClearField("options")  # v1alpha's Java and Go package names
    old, new = f".{V1ALPHA}.", f".{V1}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


def enable(service_names: Iterable[str], server: grpc.aio.Server, boundary: Boundary) -> None:
    """Serve reflection of `service_names` (and of itself) on `server`, as v1 and v1alpha, behind the
    boundary (so a body that is not a reflection request is INVALID_ARGUMENT, not a logged traceback)."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES))
    service = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    for package in (V1, V1ALPHA):
        boundary.register(server, servicer, service, f"{package}.ServerReflection")
