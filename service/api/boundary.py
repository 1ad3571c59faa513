"""The boundary every RPC crosses: request id, error translation, one structured log line.

One interceptor rather than several, because each wrapper costs microseconds on the
Check path. Log lines carry the method, the status code, the latency and the request
id, never metadata or request fields, so no key can reach a log.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from ..domain.errors import KeygateError
from .errors import internal_status, to_status

log = structlog.get_logger("keygate.rpc")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID_RE.match(value):
            return value
    return uuid.uuid4().hex


def _wrap(method: str, behavior: Behavior) -> Behavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        rid = _incoming_request_id(context)
        request_id.set(rid)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
        code = grpc.StatusCode.OK
        try:
            return await behavior(request, context)
        except KeygateError as exc:
            status = to_status(exc)
            code = status.code
            await context.abort(status.code, status.details, status.trailing_metadata)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:  # a bug: log it with its traceback, tell the caller only INTERNAL
            status = internal_status()
            code = status.code
            log.exception("rpc_failed", method=method, request_id=rid, error=type(exc).__name__)
            await context.abort(status.code, status.details, status.trailing_metadata)
        finally:
            log.info(
                "rpc",
                method=method,
                code=code.name,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                request_id=rid,
            )

    return handle


class Boundary(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming methods (health Watch, reflection) pass through untouched
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler_call_details.method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
