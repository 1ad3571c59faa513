"""The boundary every keygate RPC crosses: request id, error translation, one structured log line.

Applied once, when servicers are registered (`Boundary.wrap`), rather than as a server
interceptor, which would rebuild a method handler on every call: on the Check path
every microsecond counts. Log lines carry the method, the status code, the latency and
the request id, never metadata or request fields, so no key can reach a log.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor

from .. import logs
from ..domain.errors import KeygateError
from .errors import internal_status, to_status

_events = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Boundary:
    def __init__(self) -> None:
        self._log = logs.access_logger()
        # Unique across processes and restarts, and cheaper than a uuid4 per call.
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def wrap(self, servicer: object, service: ServiceDescriptor) -> object:
        """Replace the servicer's unary methods with wrapped ones; returns the servicer for chaining."""
        for method in service.methods:
            if not (method.client_streaming or method.server_streaming):
                name = method.name
                setattr(servicer, name, self._wrap(f"/{service.full_name}/{name}", getattr(servicer, name)))
        return servicer

    def _request_id(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID_RE.match(value):
                return value
        return f"{self._prefix}{next(self._counter):08x}"

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        log = self._log

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            rid = self._request_id(context)
            request_id.set(rid)
            echo = ((REQUEST_ID_HEADER, rid),)
            code = grpc.StatusCode.OK
            try:
                response = await behavior(request, context)
                context.set_trailing_metadata(echo)
                return response
            except KeygateError as exc:
                status = to_status(exc)
                code = status.code
                await context.abort(status.code, status.details, (*status.trailing_metadata, *echo))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # a bug: log it with its traceback, tell the caller only INTERNAL
                status = internal_status()
                code = status.code
                _events.exception("rpc_failed", method=method, request_id=rid, error=type(exc).__name__)
                await context.abort(status.code, status.details, (*status.trailing_metadata, *echo))
            finally:
                if log is not None:
                    log.info("rpc", method=method, code=code.name,
                             latency_ms=round((time.perf_counter() - started) * 1000, 3), request_id=rid)

        return handle
