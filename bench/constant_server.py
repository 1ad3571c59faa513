"""The limit for this stack: a grpc.aio server with keygate's AuthzService whose Check always
answers the same allowed CheckResponse, under uvloop, as keygate runs.

Run one process per worker: `python -m bench.constant_server --listen 127.0.0.1:PORT [--reuseport]`.
With --reuseport several processes share the port (SO_REUSEPORT), as `keygate serve --workers N` does;
without it a taken port is an error rather than a silent share.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

import grpc
import uvloop

from keygate.v1 import authz_pb2, authz_pb2_grpc

# The fields keygate fills for an allowed key, so both servers send replies of the same size.
ANSWER = authz_pb2.CheckResponse(
    allowed=True,
    code=authz_pb2.OK,
    key_id="00000000-0000-4000-8000-000000000000",
    key_name="bench-000000000000",
    workspace_id="bench",
    http_status=200,
)


class ConstantAuthz(authz_pb2_grpc.AuthzServiceServicer):
    async def Check(self, request: authz_pb2.CheckRequest, context: grpc.aio.ServicerContext
                    ) -> authz_pb2.CheckResponse:
        return ANSWER


async def serve_until_signalled(register: Callable[[grpc.aio.Server], Awaitable[None]], listen: str,
                                reuseport: bool, name: str) -> None:
    """Run a grpc.aio server with what `register` adds until SIGINT or SIGTERM (shared by both baselines)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuseport))])
    await register(server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


async def register(server: grpc.aio.Server) -> None:
    authz_pb2_grpc.add_AuthzServiceServicer_to_server(ConstantAuthz(), server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--reuseport", action="store_true", help="share the port with sibling workers")
    args = parser.parse_args()
    uvloop.run(serve_until_signalled(register, args.listen, args.reuseport, "constant_server"))


if __name__ == "__main__":
    main()
