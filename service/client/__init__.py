"""keygate's client library: ask keygate whether a key may do an action, from any Python service.

    from keygate.client import Authorizer
    async with Authorizer.from_env() as authz:
        decision = await authz.check(key, "chatflows/abc", "predictions:create")
        if not decision.allowed:
            return 403

Fail closed: `check` returns a Decision only when keygate answered; when it cannot be reached it raises
`KeygateUnavailable` (answer 503), never an allowed Decision. Middleware: `keygate.client.grpc_interceptor`
and `keygate.client.asgi`. Needs only grpcio and protobuf (`pip install keygate`, no server extra).
`Authorizer(..., cache=LocalCache(watch_key=...))` answers repeated checks in-process, kept honest by
keygate's WatchChanges stream (off by default; see cache.py).
"""

from ..tls import ClientTLS
from .authorizer import (
    Authorizer,
    CheckItem,
    KeygateClientError,
    KeygateRequestError,
    KeygateUnavailable,
    SyncAuthorizer,
)
from .cache import LocalCache
from .decision import Decision, DecisionCode, RateLimitState
from .settings import DEFAULT_SERVER, SERVER_ENV, ClientSettings, Retry

__all__ = [
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "Authorizer",
    "CheckItem",
    "ClientSettings",
    "ClientTLS",
    "Decision",
    "DecisionCode",
    "KeygateClientError",
    "KeygateRequestError",
    "KeygateUnavailable",
    "LocalCache",
    "RateLimitState",
    "Retry",
    "SyncAuthorizer",
]
