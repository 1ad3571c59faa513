"""`KeygateMiddleware`: a pure ASGI middleware (Starlette, FastAPI, any ASGI app; needs none of them) that
asks keygate before a route runs.

Routes map to (resource, action) through `Route`s: the first whose method and path template match wins,
and the template's `{names}` fill the resource (`Route("/flows/{id}", "predictions:create",
resource="chatflows/{id}")`). A route with action None is public. A path no route matches is refused
(403, fail closed). The key is `authorization: Bearer <key>`, or the `apiKey` query parameter on routes
with `query_key=True` only (a key in a URL lands in access logs and browser history). Answers: 401 with
`WWW-Authenticate: Bearer`, 403 with a JSON body {"error": {"code", "message"}}, 429 for a limit, 503 when
keygate cannot be reached. An allowed request carries its Decision in `scope["state"]["keygate"]`
(Starlette: `request.state.keygate`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import grpc

from .authorizer import Authorizer, KeygateClientError, KeygateUnavailable
from .bearer import bearer_key
from .decision import Decision

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "keygate"
_PARAMETER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    """`path` is a template: `{name}` matches one path segment. `methods` empty: every method."""

    path: str
    action: str | None
    resource: str = ""
    methods: frozenset[str] = frozenset()
    query_key: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = _PARAMETER.split(self.path)  # literal, name, literal, name, ..., literal
        regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
        object.__setattr__(self, "pattern", re.compile(regex))
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        unknown = set(_PARAMETER.findall(self.resource)) - set(parts[1::2])
        if unknown:
            raise ValueError(f"resource {self.resource!r} names {sorted(unknown)}, which path {self.path!r} lacks")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.methods and method not in self.methods:
            return None
        found = self.pattern.fullmatch(path)
        return found.groupdict() if found else None


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class KeygateMiddleware:
    def __init__(self, app: ASGIApp, authorizer: Authorizer, routes: Sequence[Route], realm: str = "keygate") -> None:
        self.app, self.authorizer, self.routes, self.realm = app, authorizer, tuple(routes), realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        try:
            decision = await self._authorize(scope)
        except _Refused as refused:
            return await self._refuse(scope, send, refused)
        if decision is not None:
            scope.setdefault("state", {})[STATE_KEY] = decision
        await self.app(scope, receive, send)

    async def _authorize(self, scope: Scope) -> Decision | None:
        """The allowed Decision, None on a public route, _Refused otherwise."""
        method = scope.get("method", "GET")
        for route in self.routes:
            params = route.match(method, scope["path"])
            if params is not None:
                break
        else:
            raise _Refused(403, "NO_RULE", "no authorization rule for this route")
        if route.action is None:
            return None
        key = self._key(scope, route)
        if not key:
            raise _Refused(401, "KEY_MISSING", "send the key as authorization: Bearer <key>")
        try:
            decision = await self.authorizer.check(key, route.resource.format_map(params), route.action)
        except KeygateUnavailable:
            raise _Refused(503, "UNAVAILABLE", "authorization unavailable: keygate cannot be reached") from None
        except KeygateClientError as error:
            if error.code is grpc.StatusCode.INVALID_ARGUMENT:  # e.g. a path segment no resource name may hold
                raise _Refused(400, "INVALID_ARGUMENT", error.message) from None
            raise _Refused(500, "INTERNAL", "authorization failed: keygate refused this service's request") from None
        if not decision.allowed:
            raise _Refused(decision.http_status or 403, str(decision.code), decision.reason)
        return decision

    @staticmethod
    def _key(scope: Scope, route: Route) -> str:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return bearer_key(value.decode("latin-1"))
        if route.query_key:
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("apiKey", [""])
            return values[0].strip()
        return ""

    async def _refuse(self, scope: Scope, send: Send, refused: _Refused) -> None:
        if scope["type"] == "websocket":  # closing before accepting: the server answers 403
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": {"code": refused.code, "message": refused.message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refused.status == 401:
            error = ', error="invalid_token"' if refused.code != "KEY_MISSING" else ""
            headers.append((b"www-authenticate", f'Bearer realm="{self.realm}"{error}'.encode()))
        elif refused.status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
