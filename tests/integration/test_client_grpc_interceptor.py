"""keygate.client.grpc_interceptor in front of a real gRPC service, asking a real keygate: the table and the
decorator map methods to (resource, action); a missing key, a denial, an unmapped method and keygate being
down are refused before the handler runs; the handler reads its decision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from keygate.client import Authorizer, ClientSettings, Retry, SyncAuthorizer
from keygate.client.grpc_interceptor import AsyncKeygateInterceptor, KeygateInterceptor, current_decision, requires
from keygate.server import App

from .processes import free_port
from .support import Client, auth

SERVICE = "demo.Flows"
RAN: list[str] = []  # the handlers that ran, so that a refusal is seen to come before the handler


def _say(method: str) -> Callable[[bytes, Any], bytes]:
    def handle(request: bytes, context: Any) -> bytes:
        RAN.append(method)
        decision = current_decision()
        return f"{decision.key_name}@{decision.workspace_id}".encode()

    return handle


@requires("chatflows/abc", "chatflows:update")
def _update(request: bytes, context: Any) -> bytes:
    RAN.append("Update")
    return current_decision().key_id.encode()


def _stream(request: bytes, context: Any) -> Iterator[bytes]:
    RAN.append("Watch")
    yield current_decision().key_name.encode()
    yield b"done"


def _public(request: bytes, context: Any) -> bytes:
    RAN.append("Ping")
    return b"pong"


def _async(handle: Callable[..., Any]) -> Callable[..., Any]:
    async def run(request: bytes, context: Any) -> Any:
        return handle(request, context)

    if handle is _stream:
        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for item in _stream(request, context):
                yield item

        return stream
    run.__dict__.update(handle.__dict__)  # the @requires mark
    return run


HANDLERS: dict[str, tuple[Callable[..., grpc.RpcMethodHandler], Callable[..., Any]]] = {
    "View": (grpc.unary_unary_rpc_method_handler, _say("View")),
    "Update": (grpc.unary_unary_rpc_method_handler, _update),
    "Watch": (grpc.unary_stream_rpc_method_handler, _stream),
    "Ping": (grpc.unary_unary_rpc_method_handler, _public),
    "Delete": (grpc.unary_unary_rpc_method_handler, _say("Delete")),  # no rule at all
}
TABLE = {f"/{SERVICE}/{name}": ("chatflows/abc", "chatflows:view") for name in ("View", "Watch")}
PUBLIC = [f"/{SERVICE}/Ping"]


def generic_handler(asynchronous: bool) -> grpc.GenericRpcHandler:
    wrap = _async if asynchronous else (lambda handle: handle)
    return grpc.method_handlers_generic_handler(SERVICE, {name: build(wrap(handle)) for name, (build, handle)
                                                          in HANDLERS.items()})


def keygate_settings(app: App) -> ClientSettings:
    return ClientSettings(server=f"127.0.0.1:{app.port}")


async def calls(address: str, key: str | None) -> dict[str, object]:
    """Every method called once: its answer, or the status code and message it was refused with."""
    metadata = auth(key) if key else None
    out: dict[str, object] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        for name in HANDLERS:
            if name == "Watch":
                method: Any = channel.unary_stream(f"/{SERVICE}/{name}")
            else:
                method = channel.unary_unary(f"/{SERVICE}/{name}")
            try:
                call = method(b"", metadata=metadata, timeout=10)
                out[name] = [item async for item in call] if name == "Watch" else await call
            except grpc.aio.AioRpcError as error:
                out[name] = error.code()
    return out


def expected(name: str) -> dict[str, dict[str, object]]:
    return {
        "viewer": {"View": f"{name}@ws1".encode(), "Update": grpc.StatusCode.PERMISSION_DENIED,
                   "Watch": [name.encode(), b"done"], "Ping": b"pong", "Delete": grpc.StatusCode.PERMISSION_DENIED},
        "no key": {"View": grpc.StatusCode.UNAUTHENTICATED, "Update": grpc.StatusCode.UNAUTHENTICATED,
                   "Watch": grpc.StatusCode.UNAUTHENTICATED, "Ping": b"pong",
                   "Delete": grpc.StatusCode.PERMISSION_DENIED},
        "unknown key": {"View": grpc.StatusCode.UNAUTHENTICATED, "Update": grpc.StatusCode.UNAUTHENTICATED,
                        "Watch": grpc.StatusCode.UNAUTHENTICATED, "Ping": b"pong",
                        "Delete": grpc.StatusCode.PERMISSION_DENIED},
    }


async def outcomes(address: str, viewer: str) -> dict[str, dict[str, object]]:
    RAN.clear()
    found = {"viewer": await calls(address, viewer), "no key": await calls(address, None),
             "unknown key": await calls(address, "kg_" + "x" * 49)}
    assert RAN == ["View", "Watch", "Ping", "Ping", "Ping"]  # refused calls never reached their handler
    return found


async def test_aio_interceptor_guards_methods_against_a_real_keygate(app: App, client: Client) -> None:
    created = await client.create(name="viewer", permissions=["chatflows:view"])
    async with Authorizer(keygate_settings(app)) as authz:
        server = grpc.aio.server(interceptors=[AsyncKeygateInterceptor(authz, TABLE, PUBLIC)])
        server.add_generic_rpc_handlers((generic_handler(asynchronous=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert await outcomes(f"127.0.0.1:{port}", created.api_key) == expected("viewer")
        finally:
            await server.stop(0)


async def test_sync_interceptor_guards_methods_against_a_real_keygate(app: App, client: Client) -> None:
    created = await client.create(name="viewer", permissions=["chatflows:view", "chatflows:update"])
    with SyncAuthorizer(keygate_settings(app)) as authz:
        server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[KeygateInterceptor(authz, TABLE, PUBLIC)])
        server.add_generic_rpc_handlers((generic_handler(asynchronous=False),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            answers = await calls(f"127.0.0.1:{port}", created.api_key)
            refused = await calls(f"127.0.0.1:{port}", None)
        finally:
            server.stop(0).wait()
    assert answers["Update"] == created.key.id.encode() and answers["View"] == b"viewer@ws1"
    assert answers["Watch"] == [b"viewer", b"done"] and answers["Delete"] == grpc.StatusCode.PERMISSION_DENIED
    assert refused["View"] == grpc.StatusCode.UNAUTHENTICATED and refused["Ping"] == b"pong"


@pytest.mark.parametrize("asynchronous", [True, False])
async def test_keygate_down_is_unavailable_and_the_handler_never_runs(asynchronous: bool) -> None:
    down = ClientSettings(server=f"127.0.0.1:{free_port()}", timeout=0.5, retry=Retry(attempts=2, base=0.01))
    RAN.clear()
    if asynchronous:
        async with Authorizer(down) as authz:
            server = grpc.aio.server(interceptors=[AsyncKeygateInterceptor(authz, TABLE, PUBLIC)])
            server.add_generic_rpc_handlers((generic_handler(asynchronous=True),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            answers = await calls(f"127.0.0.1:{port}", "kg_" + "x" * 49)
            await server.stop(0)
    else:
        with SyncAuthorizer(down) as sync_authz:
            sync_server = grpc.server(futures.ThreadPoolExecutor(2),
                                      interceptors=[KeygateInterceptor(sync_authz, TABLE, PUBLIC)])
            sync_server.add_generic_rpc_handlers((generic_handler(asynchronous=False),))
            port = sync_server.add_insecure_port("127.0.0.1:0")
            sync_server.start()
            answers = await calls(f"127.0.0.1:{port}", "kg_" + "x" * 49)
            await asyncio.to_thread(lambda: sync_server.stop(0).wait())
    assert answers == {"View": grpc.StatusCode.UNAVAILABLE, "Update": grpc.StatusCode.UNAVAILABLE,
                       "Watch": grpc.StatusCode.UNAVAILABLE, "Ping": b"pong",
                       "Delete": grpc.StatusCode.PERMISSION_DENIED}
    assert RAN == ["Ping"]
