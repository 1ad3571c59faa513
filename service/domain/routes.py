"""HTTP route rules for the mesh door: method + path template -> (resource, action).

A rule such as `POST /api/v1/prediction/{id}` -> `chatflows/{id}` + `predictions:create`
turns an HTTP request Envoy asks about into the same question Check answers. The first
matching rule wins; a request no rule matches is denied unless `unmatched` is "allow".
A rule's `access` is `key` (the default: Check decides), `public` (passed on without a key, as the
upstream's own unauthenticated endpoints are) or `refused` (never passed on).
Paths match case-blind, as Flowise's router (Express) matches them, so `/API/V1/Prediction/x`
cannot slip past a rule written in lower case. The resource a rule produces is made
canonical by the same resource model as every other door (`keygate.domain.resources`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .errors import InvalidArgument
from .evaluators.base import CheckItem
from .permissions import Catalog
from .resources import target

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"})
KEY, PUBLIC, REFUSED = "key", "public", "refused"
MEMO_ENTRIES = 8192  # (method, path) pairs whose first matching rule is remembered
MEMO_PATH_LEN = 1024  # longer paths are not remembered: the memo holds at most ~8 MB of paths
_ACCESS = (KEY, PUBLIC, REFUSED)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # template, e.g. /api/v1/prediction/{id}
    action: str  # empty unless access is key
    resource: str = ""  # template, e.g. chatflows/{id}; empty = collection-level
    query_key: bool = False  # may the key come in the query string on this route?
    access: str = KEY
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = _VARIABLE.split(self.path)
        pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
        object.__setattr__(self, "regex", re.compile(f"^{pattern}/?\\Z", re.IGNORECASE))

    def resolve(self, method: str, path: str) -> str | None:
        """The resource this request names, or None if the rule does not match it. A GET rule covers HEAD too,
        as Express's router does (a HEAD rule earlier in the table still wins): the same permission."""
        if self.method not in ("*", method) and not (method == "HEAD" and self.method == "GET"):
            return None
        match = self.regex.match(path)
        if match is None:
            return None
        return _VARIABLE.sub(lambda m: match.group(m.group(1)), self.resource)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    resource: str
    # The question it asks, before any workspace header or client address: matches are remembered per
    # (method, path), so the door builds no CheckItem per request for them.
    item: CheckItem = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "item", CheckItem(self.resource, self.route.action))


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...]
    allow_unmatched: bool = False
    key_header: str = "x-api-key"
    query_parameter: str = "apiKey"
    workspace_header: str = ""  # a header naming the workspace of the request, if the mesh sets one
    # (header, value) by which the upstream's own UI marks a call made with its login session, not a key
    # (Flowise: `x-request-from: internal`): such a call presenting no key is the upstream's to verify.
    upstream_session: tuple[str, str] | None = None
    # The upstream's API lives under this path prefix; every other path (a web UI's pages and assets) is
    # public. Compared percent-decoded and case-blind, so no spelling of an API path counts as outside.
    api_prefix: str = ""
    # CORS preflights (OPTIONS) pass without a key: a browser sends them with no credential, and the
    # upstream answers them before any route (Flowise's cors middleware), so they reach no API handler.
    public_preflight: bool = False
    # The first rule matching (method, path), memoized per table. Not `lru_cache` on the method: its key
    # would hold the table itself, whose dataclass hash walks every rule on every request.
    match: Callable[[str, str], Match | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(self._first_match)
        first_match = self._first_match

        def match(method: str, path: str) -> Match | None:
            # A long path is matched afresh: a memo keyed by any path a caller sends would hold up to
            # MEMO_ENTRIES x the largest request line Envoy accepts (60 KiB): 480 MB.
            return memo(method, path) if len(path) <= MEMO_PATH_LEN else first_match(method, path)

        object.__setattr__(self, "match", match)

    def _first_match(self, method: str, path: str) -> Match | None:
        for route in self.routes:
            resource = route.resolve(method, path)
            if resource is not None:
                return Match(route, resource)
        return None

    @classmethod
    def parse(cls, data: Mapping[str, Any], catalog: Catalog) -> RouteTable:
        """A table from a routes file's content; InvalidArgument names the first bad entry."""
        key = data.get("key") or {}
        unmatched = data.get("unmatched", "deny")
        if unmatched not in ("deny", "allow"):
            raise InvalidArgument("unmatched", "must be 'deny' or 'allow'")
        rules = data.get("routes")
        if not isinstance(rules, Sequence) or not rules:
            raise InvalidArgument("routes", "list at least one route")
        return cls(
            routes=tuple(_route(rule, f"routes[{i}]", catalog) for i, rule in enumerate(rules)),
            allow_unmatched=unmatched == "allow",
            key_header=str(key.get("header", "x-api-key")).lower(),
            query_parameter=str(key.get("query_parameter", "apiKey")),
            workspace_header=str(data.get("workspace_header", "")).lower(),
            upstream_session=_upstream_session(data.get("upstream_session")),
            api_prefix=_api_prefix(data.get("api_prefix", "")),
            public_preflight=_preflight(data.get("preflight", "rules")),
        )

    def public_without_rule(self, method: str, path: str) -> bool:
        """A request no rule covers that passes anyway: a page of the upstream's web UI, or a CORS preflight."""
        return self.outside_api(path) or (method == "OPTIONS" and self.public_preflight)

    def outside_api(self, path: str) -> bool:
        """Is this path outside the upstream's API (so public), whatever its spelling?"""
        if not self.api_prefix:
            return False
        decoded = unquote(path).lower()
        return not (decoded + "/").startswith(self.api_prefix) and "%" not in decoded

    def session_call(self, headers: Mapping[str, str]) -> bool:
        """Does this request say it comes from the upstream's own logged-in UI?"""
        marker = self.upstream_session
        return marker is not None and headers.get(marker[0], "").strip().lower() == marker[1]


def _preflight(raw: Any) -> bool:
    if raw not in ("public", "rules"):
        raise InvalidArgument("preflight", "must be 'public' (CORS preflights pass without a key) or 'rules'")
    return raw == "public"


def _api_prefix(raw: Any) -> str:
    prefix = str(raw).lower()
    if prefix and not (prefix.startswith("/") and prefix.endswith("/") and len(prefix) > 2):
        raise InvalidArgument("api_prefix", "a path prefix such as /api/ (with both slashes), or empty")
    return prefix


def _upstream_session(raw: Any) -> tuple[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw.get("header") or not raw.get("value"):
        raise InvalidArgument("upstream_session", "give the header and the value that mark the upstream's own "
                                                  "session calls, e.g. {header: x-request-from, value: internal}")
    return str(raw["header"]).lower(), str(raw["value"]).lower()


def _route(rule: Any, at: str, catalog: Catalog) -> Route:
    if not isinstance(rule, Mapping):
        raise InvalidArgument(at, "each route is a mapping with method, path and action")
    method = str(rule.get("method", "")).upper()
    if method not in _METHODS:
        raise InvalidArgument(f"{at}.method", f"{method!r} is not an HTTP method (or '*')")
    path = str(rule.get("path", ""))
    if not path.startswith("/"):
        raise InvalidArgument(f"{at}.path", "must start with '/'")
    access = str(rule.get("access", KEY))
    if access not in _ACCESS:
        raise InvalidArgument(f"{at}.access", f"must be one of {', '.join(_ACCESS)}, not {access!r}")
    access = _ACCESS[_ACCESS.index(access)]  # the module's own string: servicers test it with `is`
    if access != KEY:
        extra = sorted(set(rule) & {"action", "resource", "query_key"})
        if extra:
            raise InvalidArgument(f"{at}.access", f"an {access} route takes no {', '.join(extra)}")
        return Route(method, path, "", access=access)
    action = catalog.validate_action(str(rule.get("action", "")), f"{at}.action")
    resource = str(rule.get("resource", ""))
    names = set(_VARIABLE.findall(path))
    missing = set(_VARIABLE.findall(resource)) - names
    if missing:
        raise InvalidArgument(f"{at}.resource", f"uses {sorted(missing)} which the path does not capture")
    if resource:
        # The collection must be literal, in the catalog, and one the action acts on.
        collection = target(catalog, _VARIABLE.sub("x", resource), action, f"{at}.").resource.partition("/")[0]
        resource = collection + "/" + resource.partition("/")[2]
    return Route(method, path, action, resource, bool(rule.get("query_key", False)))
