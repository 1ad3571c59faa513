"""Server interceptors that ask keygate before a gRPC handler runs: `AsyncKeygateInterceptor` (grpc.aio)
and `KeygateInterceptor` (grpc's thread pool).

Each method maps to a (resource, action) through the `methods` table ({"/pkg.Service/Method": (resource,
action)}) or the `@requires(resource, action)` decorator on the servicer's method; `public` methods pass
without a key. A method with neither is refused (fail closed). The key comes from `authorization: Bearer`;
none is UNAUTHENTICATED, a denial UNAUTHENTICATED (401) or PERMISSION_DENIED (403), keygate out of reach
UNAVAILABLE, all before the handler runs. The handler reads the decision with `current_decision()`.
The check runs inside the wrapped handler, so a sync server checks on its worker thread, never its poller.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import grpc

from .authorizer import Authorizer, KeygateClientError, KeygateUnavailable, SyncAuthorizer
from .bearer import bearer_key
from .decision import Decision

_current: contextvars.ContextVar[Decision | None] = contextvars.ContextVar("keygate_decision", default=None)
_RULE = "__keygate_rule__"
_F = TypeVar("_F", bound=Callable[..., Any])


class Rule(NamedTuple):
    resource: str
    action: str


def requires(resource: str, action: str) -> Callable[[_F], _F]:
    """Mark a servicer method with the (resource, action) keygate must allow before it runs."""

    def mark(method: _F) -> _F:
        setattr(method, _RULE, Rule(resource, action))
        return method

    return mark


def current_decision() -> Decision:
    """The allowed Decision of the request being handled; LookupError outside an intercepted handler."""
    decision = _current.get()
    if decision is None:
        raise LookupError("no keygate decision: this handler is not behind a keygate interceptor")
    return decision


class Refusal(Exception):
    """The status to end the call with instead of running the handler."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def refusal_of(decision: Decision) -> Refusal:
    """The gRPC status of a denial, following its http_status: 401 UNAUTHENTICATED, 429
    RESOURCE_EXHAUSTED, anything else PERMISSION_DENIED."""
    code = {401: grpc.StatusCode.UNAUTHENTICATED,
            429: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(decision.http_status, grpc.StatusCode.PERMISSION_DENIED)
    return Refusal(code, f"{decision.code}: {decision.reason}")


def refusal_of_error(error: KeygateClientError) -> Refusal:
    """No decision: UNAVAILABLE when keygate is out of reach, INTERNAL when it refused this service's own
    request (a wrong table entry: the caller's request is not at fault)."""
    if isinstance(error, KeygateUnavailable):
        return Refusal(grpc.StatusCode.UNAVAILABLE, "authorization unavailable: keygate cannot be reached")
    return Refusal(grpc.StatusCode.INTERNAL, "authorization failed: keygate refused this service's request")


class _Ask(NamedTuple):
    """What to ask keygate for one call: the caller's key ("" when it sent none) and the method's rule."""

    key: str
    rule: Rule

    def question(self) -> tuple[str, str, str]:
        """(key, resource, action); a Refusal without a key, which needs no round trip."""
        if not self.key:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "KEY_MISSING: send the key as authorization: Bearer <key>")
        return self.key, self.rule.resource, self.rule.action


class _Rules:
    """Which methods need which (resource, action): a method in neither the table nor marked is refused."""

    def __init__(self, methods: Mapping[str, tuple[str, str]] | None, public: Iterable[str]) -> None:
        self._methods = {name: Rule(*rule) for name, rule in (methods or {}).items()}
        self._public = frozenset(public)

    def plan(self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler) -> _Ask | Refusal | None:
        """None: run the handler as it is (a public method)."""
        if details.method in self._public:
            return None
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        rule = self._methods.get(details.method) or getattr(behavior, _RULE, None)
        if rule is None:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"no keygate rule for {details.method}")
        return _Ask(_key(details), rule)


def _admitted(decision: Decision) -> Decision:
    if not decision.allowed:
        raise refusal_of(decision)
    return decision


def _key(details: grpc.HandlerCallDetails) -> str:
    for name, value in details.invocation_metadata or ():
        if name == "authorization":
            return bearer_key(str(value))
    return ""


def _rebuild(handler: grpc.RpcMethodHandler, unary: Callable[[Any], Any],
             streaming: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped: `unary` for a single response, `streaming` otherwise."""
    build: Any
    if handler.unary_unary:
        build, behavior = grpc.unary_unary_rpc_method_handler, unary(handler.unary_unary)
    elif handler.stream_unary:
        build, behavior = grpc.stream_unary_rpc_method_handler, unary(handler.stream_unary)
    elif handler.unary_stream:
        build, behavior = grpc.unary_stream_rpc_method_handler, streaming(handler.unary_stream)
    else:
        build, behavior = grpc.stream_stream_rpc_method_handler, streaming(handler.stream_stream)
    return build(behavior, request_deserializer=handler.request_deserializer,
                 response_serializer=handler.response_serializer)


class AsyncKeygateInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authorizer: Authorizer, methods: Mapping[str, tuple[str, str]] | None = None,
                 public: Iterable[str] = ()) -> None:
        self._authorizer = authorizer
        self._rules = _Rules(methods, public)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        plan = None if handler is None else self._rules.plan(details, handler)
        if handler is None or plan is None:
            return handler
        return _rebuild(handler, *_aio_wrappers(self._authorize(plan)))

    def _authorize(self, plan: _Ask | Refusal) -> Callable[[], Awaitable[Decision]]:
        async def authorize() -> Decision:
            if isinstance(plan, Refusal):
                raise plan
            question = plan.question()
            try:
                return _admitted(await self._authorizer.check(*question))
            except KeygateClientError as error:
                raise refusal_of_error(error) from None

        return authorize


def _aio_wrappers(authorize: Callable[[], Awaitable[Decision]]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            _current.set(await authorize())
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.message)

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await behavior(request, context)

        return run

    def streaming(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await admit(context)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result

        return run

    return unary, streaming


class KeygateInterceptor(grpc.ServerInterceptor):
    """For grpc.server(ThreadPoolExecutor(...)): the check blocks the worker thread that runs the handler."""

    def __init__(self, authorizer: SyncAuthorizer, methods: Mapping[str, tuple[str, str]] | None = None,
                 public: Iterable[str] = ()) -> None:
        self._authorizer = authorizer
        self._rules = _Rules(methods, public)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        plan = None if handler is None else self._rules.plan(details, handler)
        if handler is None or plan is None:
            return handler
        return _rebuild(handler, *_sync_wrappers(self._authorize(plan)))

    def _authorize(self, plan: _Ask | Refusal) -> Callable[[], Decision]:
        def authorize() -> Decision:
            if isinstance(plan, Refusal):
                raise plan
            question = plan.question()
            try:
                return _admitted(self._authorizer.check(*question))
            except KeygateClientError as error:
                raise refusal_of_error(error) from None

        return authorize


def _sync_wrappers(authorize: Callable[[], Decision]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The decision is set for the handler and reset after it: a pool thread serves many calls."""

    def admit(context: grpc.ServicerContext) -> contextvars.Token[Decision | None]:
        try:
            return _current.set(authorize())
        except Refusal as refusal:
            context.abort(refusal.code, refusal.message)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            token = admit(context)
            try:
                return behavior(request, context)
            finally:
                _current.reset(token)

        return run

    def streaming(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = admit(context)
            try:
                yield from behavior(request, context)
            finally:
                _current.reset(token)

        return run

    return unary, streaming
