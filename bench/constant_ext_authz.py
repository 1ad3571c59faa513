"""The limit for Envoy ext_authz on this stack: a grpc.aio server under uvloop (as keygate runs) whose
envoy.service.auth.v3.Authorization/Check allows every request with a constant answer.

The answer has the shape and size of keygate's own for an allowed `Authorization: Bearer` key: the
three identity headers; both key headers (`authorization`, `x-api-key`) and `x-request-from` in
headers_to_remove; the same dynamic metadata (code, key_id, workspace_id; keygate adds a decision id
only to the calls it logs, and allowed ones are not logged by default). So Envoy receives and applies
the same bytes from both servers. Like keygate, it answers grpc.health.v1 SERVING for the Authorization
service, which the shipped keygate cluster's health checking asks about every second: both get the same
checks.

Run: `python -m bench.constant_ext_authz --listen 127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse

import grpc
import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .constant_server import ANSWER, serve_until_signalled

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def _answer() -> external_auth_pb2.CheckResponse:
    metadata = struct_pb2.Struct()
    metadata.update({"code": "OK", "key_id": ANSWER.key_id, "workspace_id": ANSWER.workspace_id})
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                _header("x-keygate-key-id", ANSWER.key_id),
                _header("x-keygate-workspace-id", ANSWER.workspace_id),
                _header("x-keygate-key-name", ANSWER.key_name),
            ],
            headers_to_remove=["authorization", "x-api-key", "x-request-from"],  # carriers, session marker
        ),
        dynamic_metadata=metadata,
    )


ALLOW = _answer()


class ConstantExtAuthz(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        return ALLOW


AUTHORIZATION = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


async def register(server: grpc.aio.Server) -> None:
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ConstantExtAuthz(), server)
    serving = health.aio.HealthServicer()
    await serving.set(AUTHORIZATION, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(serving, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    uvloop.run(serve_until_signalled(register, args.listen, False, "constant_ext_authz"))


if __name__ == "__main__":
    main()
