"""Server reflection as current grpcurl and Postman ask for it (`grpc.reflection.v1`) and as older clients do
(`grpc.reflection.v1alpha`): a real reflection stream on each path."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .support import Client

PACKAGES = ("grpc.reflection.v1", "grpc.reflection.v1alpha")


def messages(package: str) -> tuple[Any, Any]:
    """The request and response classes of `package`, from the descriptor pool (v1 is keygate's addition)."""
    pool = descriptor_pool.Default()
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
                 for name in ("ServerReflectionRequest", "ServerReflectionResponse"))


async def reflect(channel: grpc.aio.Channel, package: str, **request: str) -> Any:
    request_type, response_type = messages(package)
    call = channel.stream_stream(f"/{package}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=request_type.SerializeToString,
                                 response_deserializer=response_type.FromString)
    responses = [r async for r in call(iter([request_type(**request)]), timeout=10)]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize("package", PACKAGES)
async def test_both_versions_list_the_services(client: Client, package: str) -> None:
    answer = await reflect(client.channel, package, list_services="")
    names = {s.name for s in answer.list_services_response.service}
    assert {"keygate.v1.KeyService", "keygate.v1.AuthzService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("symbol", ["keygate.v1.AuthzService", "grpc.reflection.v1.ServerReflection"])
async def test_both_versions_describe_the_services(client: Client, package: str, symbol: str) -> None:
    """What grpcurl's `describe` and Postman's method list need, the v1 reflection service itself included."""
    answer = await reflect(client.channel, package, file_containing_symbol=symbol)
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in answer.file_descriptor_response.file_descriptor_proto]
    described = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in files for s in f.service}
    assert described[symbol] >= ({"ListPermissions"} if symbol.startswith("keygate") else {"ServerReflectionInfo"})
