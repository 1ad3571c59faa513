"""The boundary every keygate RPC crosses: request parsing, request id, error translation, the access log.

Applied once, when servicers are registered (`Boundary.register`), rather than as a server
interceptor, which would rebuild a method handler on every call: on the Check path
every microsecond counts. Log lines carry the method, the status code, the decision code,
the latency and the request id, never metadata or request fields, so no key can reach a log.
Which calls get a line is the access log's policy (`logs.AccessLog`); the allowed answers
of a service's `quiet` methods (Check, ext_authz, health probes) only under `all`.

Requests are parsed by our own deserializer, which cannot fail: bytes that are not the
method's message become `MALFORMED`, which the boundary answers with INVALID_ARGUMENT.
A deserializer that raises would make grpc answer UNKNOWN and log a traceback per call,
unauthenticated, before any handler of ours runs.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeGuard

import grpc
import structlog
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from .. import logs
from ..domain.errors import KEY_SHAPED, InvalidArgument, KeygateError
from ..domain.keys import SECRET_LEN
from ..metrics import Metrics, decision
from .errors import internal_status, to_status

_events = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
# Unique across processes and restarts, and cheaper than a uuid4 per call: a random prefix and a counter,
# formatted by C code alone (no Python frame per id).
_ids = map(f"{os.urandom(6).hex()}{{:08x}}".format, itertools.count(1))
# This call's request id once it has one; before that (a quiet call, see `Boundary.register`), its gRPC
# context, from which `current_request_id` takes the caller's id or makes one when first needed.
_call: contextvars.ContextVar[str | grpc.aio.ServicerContext | None] = contextvars.ContextVar("call", default=None)
# What a deciding servicer decided for this call (metrics.decision): a decision Code's value, or a word
# of the Envoy servicer's. Strings, so the boundary's test is a set lookup with a cached hash.
UNMATCHED_ALLOWED = "UNMATCHED_ALLOWED"  # the Envoy servicer's pass for a request no route rule covers
PUBLIC_ROUTE = "PUBLIC"  # the Envoy servicer's pass for a route rule that needs no key
UPSTREAM_SESSION = "UPSTREAM_SESSION"  # its pass for a keyless call of the upstream's own logged-in UI
# "": the servicer decided nothing (not a Check)
ALLOWING = frozenset({"", "OK", UNMATCHED_ALLOWED, PUBLIC_ROUTE, UPSTREAM_SESSION})

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
_HANDLERS = {  # (client streaming, server streaming) -> how grpc wants the handler
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _Malformed:
    """What our deserializer returns for bytes that are not the method's message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()


def _malformed(message_name: str) -> InvalidArgument:
    return InvalidArgument("request", f"the body is not a valid {message_name} message")


def current_request_id() -> str:
    """This call's request id: the caller's `x-request-id` if acceptable, else a fresh one; assigned on
    first need, so a quiet call that is allowed and not logged never pays for reading metadata."""
    held = _call.get()
    if isinstance(held, str):
        return held
    assigned = _request_id(held) if held is not None else next(_ids)
    _call.set(assigned)
    return assigned


def assigned_request_id() -> str:
    """This call's request id if it already has one (it will be logged), else "" (and none is made)."""
    held = _call.get()
    return held if type(held) is str else ""


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and acceptable_request_id(value):
            return value
    return next(_ids)


def acceptable_request_id(value: object) -> TypeGuard[str]:
    """A caller's request id is echoed, logged and audited, so it must not be able to carry a key."""
    return (isinstance(value, str) and _REQUEST_ID_RE.match(value) is not None
            and (len(value) < SECRET_LEN or KEY_SHAPED.search(value) is None))


class _Methods(grpc.GenericRpcHandler):
    """Every method served behind the boundary, by its full path: one lookup per call. grpc asks each
    generic handler in turn, so one per service cost the later services a Python call per earlier one
    (ext_authz, third, paid two)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(handler_call_details.method)


class Boundary:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self.started = 0  # unary calls handed to a handler so far: a drain waits until none arrive
        self._malformed_log = logs.Throttle()
        self._served: dict[grpc.aio.Server, _Methods] = {}  # the one generic handler of each server

    def register(self, server: grpc.aio.Server, servicer: object, service: ServiceDescriptor,
                 name: str = "", quiet: frozenset[str] = frozenset()) -> None:
        """Serve the methods of `service` that `servicer` implements on `server`, behind the boundary.

        `quiet`: the methods (by name) whose allowed, successful answers are counted by metrics and
        logged only when the access log's policy is `all`.

        A method left to the generated base class (which raises NotImplementedError, e.g. Health.List)
        is not registered, so grpc answers UNIMPLEMENTED instead of our boundary reporting a bug.
        """
        full_name = name or service.full_name  # `name`: the same service served under another package
        # Generic handlers only. grpcio's AsyncIO server (1.8x) serves registered methods by waiting on one
        # pending call per registered method for every RPC (grpc/grpc#43461): with keygate's ~25 methods
        # that was 22% more instructions per cached Check than the same server with none registered.
        methods = self._served.get(server)
        if methods is None:
            methods = self._served[server] = _Methods()
            server.add_generic_rpc_handlers((methods,))
        methods.handlers.update(
            (f"/{full_name}/{method.name}",
             self._handler(full_name, method, getattr(servicer, method.name), method.name in quiet))
            for method in service.methods if _implemented(servicer, method.name))

    def _handler(self, service: str, method: MethodDescriptor, behavior: Behavior,
                 quiet: bool) -> grpc.RpcMethodHandler:
        path = f"/{service}/{method.name}"
        name = method.input_type.full_name
        shape = (method.client_streaming, method.server_streaming)
        # Streams are not access-logged (a Watch lasts as long as its client); their requests are screened.
        unary = shape == (False, False)
        wrapped = self._wrap(path, name, behavior, quiet) if unary else _screened(behavior, name, shape[0])
        return _HANDLERS[shape](
            wrapped,
            request_deserializer=self._parser(path, message_factory.GetMessageClass(method.input_type).FromString),
            response_serializer=_bytes_or(message_factory.GetMessageClass(method.output_type).SerializeToString),
        )

    def _parser(self, method: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        throttle = self._malformed_log

        def parse_or_mark(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:  # whatever the bytes were, they are the caller's mistake
                dropped = throttle.admit(method)
                if dropped is not None:
                    _events.warning("malformed_request", method=method, size=len(data), dropped_before=dropped)
                return MALFORMED

        return parse_or_mark

    def _wrap(self, method: str, message_name: str, behavior: Behavior, quiet: bool) -> Behavior:
        log, decided, ok, clock, call = logs.ACCESS, decision.get, grpc.StatusCode.OK, time.perf_counter, _call.get
        record = self._metrics.recorder(method) if self._metrics is not None else None

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = clock()
            self.started += 1
            # A request id identifies a call in the log: one that will not be logged (a quiet method's
            # allowed answer, unless the policy is `all`) gets none, and reads no metadata for one.
            _call.set(context if quiet and not log.log_all else _request_id(context))
            code = ok
            outcome = None  # what the servicer decided, read once (metrics.decision)
            try:
                if request is MALFORMED:
                    raise _malformed(message_name)
                response = await behavior(request, context)
                outcome = decided()
                if type(call()) is str or outcome not in ALLOWING:  # it will be logged: identify it
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, current_request_id()),))
                return response
            except KeygateError as exc:
                status = to_status(exc)
                code = status.code
                await context.abort(status.code, status.details,
                                    (*status.trailing_metadata, (REQUEST_ID_HEADER, current_request_id())))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # a bug: log it with its traceback, tell the caller only INTERNAL
                status = internal_status()
                code = status.code
                rid = current_request_id()
                _events.exception("rpc_failed", method=method, request_id=rid, error=type(exc).__name__)
                await context.abort(status.code, status.details,
                                    (*status.trailing_metadata, (REQUEST_ID_HEADER, rid)))
            finally:
                if outcome is None:
                    outcome = decided()
                elapsed = clock() - started  # one clock read for the metrics and the log line
                if record is not None:
                    record(code, outcome, elapsed)
                if log.enabled:
                    refused = code is not ok or outcome not in ALLOWING
                    if refused or not quiet or log.log_all:
                        log.write(method, code.name, outcome, round(elapsed * 1000, 3),
                                  current_request_id(), refused=refused)

        return handle


def _bytes_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A servicer may return a reply it keeps already serialized (a remembered decision's): its bytes
    are sent as they are, which spares serializing the same reply on every call."""

    def serialized(reply: Any) -> bytes:
        return reply if type(reply) is bytes else serialize(reply)

    return serialized


def _implemented(servicer: object, name: str) -> bool:
    """Not the stub that generated `*_pb2_grpc` base classes provide for every method."""
    return not getattr(type(servicer), name).__module__.endswith("_pb2_grpc")


async def _refuse(context: grpc.aio.ServicerContext, message_name: str) -> None:
    status = to_status(_malformed(message_name))
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _screen_each(requests: AsyncIterable[Any], context: grpc.aio.ServicerContext,
                       message_name: str) -> AsyncIterator[Any]:
    async for request in requests:
        if request is MALFORMED:
            await _refuse(context, message_name)
        yield request


def _screened(behavior: Behavior, message_name: str, client_streaming: bool) -> Behavior:
    """A streaming method whose malformed request(s) end the call with INVALID_ARGUMENT."""

    async def screen(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if client_streaming:
            return _screen_each(request, context, message_name)
        if request is MALFORMED:
            await _refuse(context, message_name)
        return request

    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(await screen(request, context), context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await screen(request, context), context)

    return call
