"""envoy.service.auth.v3.Authorization: the mesh door, rendered from the shared identify/decide path.

identify, first half (here): route the HTTP request to (resource, action) and take the key
from `Authorization: Bearer`, the configured header, or, on routes that allow it, the query
string. Every place a key was found is stripped before the request travels upstream.
A route rule may make a route public (passed on without a decision, keys stripped all the same) or
refused.
render (here): an OK with identity headers and, when configured, the upstream credential
(`Authorization: Bearer <the workspace's Flowise key>`, see keygate.upstream), or a denial Envoy sends
as is: 401 with
WWW-Authenticate, 403, 400 for a request keygate cannot read, 503 with Retry-After when
it cannot decide. Decision metadata goes into dynamic_metadata for access logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from .. import metrics
from ..authz import Authorizer, CheckItem
from ..clock import utcnow
from ..domain.decision import CODES, Answer, Code, Credential, Decision
from ..domain.errors import InvalidArgument, Unavailable, redact
from ..domain.limits import Limits
from ..domain.routes import KEY, PUBLIC, RouteTable
from ..limits.edge import limit_headers, limits_metadata, retry_after
from ..upstream import UpstreamCredentials
from .boundary import PUBLIC_ROUTE, UNMATCHED_ALLOWED, UPSTREAM_SESSION, assigned_request_id, current_request_id
from .replies import Rendered, Replies

_decide = metrics.decision.set  # what this call decided (bound once: it is on every call's path)

RETRY_AFTER_SECONDS = "1"
# Header values are ASCII: a key name outside it is sent percent-encoded (UTF-8), the rest as is.
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
IDENTITY_HEADERS = ("x-keygate-key-id", "x-keygate-workspace-id", "x-keygate-key-name")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK = Code.OK.value  # read once: an Enum's `.value` is a Python-level property
_OK_CODE = Code.OK
# The door's own refusals, words rather than decision codes (whose answers are domain.decision.CODES).
_BAD_REQUEST = Answer(400, "INVALID_ARGUMENT")
_NOT_ROUTED = Answer(403, "PERMISSION_DENIED")
_NO_CREDENTIAL = Answer(500, "INTERNAL")
_CANNOT_DECIDE = Answer(503, "UNAVAILABLE", retry_after=True)


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def _metadata(code: str, key_id: str = "", workspace_id: str = "", decision_id: str = "",
              limits: Limits | None = None) -> struct_pb2.Struct:
    """The decision for Envoy's access log; `decision_id` (keygate's request id) only when keygate logs
    the call too, so the two lines can be joined; a limited key's limits (keygate.limits.edge), for
    Envoy's rate-limit filter."""
    out = struct_pb2.Struct()
    out.update({"code": code, "key_id": key_id, "workspace_id": workspace_id})
    if limits is not None:
        out.update(limits_metadata(limits))
    if decision_id:
        out.fields["decision_id"].string_value = decision_id
    return out


def _denied(answer: Answer, code: str, message: str, *, key_presented: bool = False,
            key_id: str = "", workspace_id: str = "", retry_after: str | None = RETRY_AFTER_SECONDS,
            more: Sequence[tuple[str, str]] = ()) -> external_auth_pb2.CheckResponse:
    """`retry_after`: for a code whose answer carries Retry-After, its value (None: left out); `more`:
    further headers (a limited key's RateLimit headers)."""
    _decide(code)
    headers = [_header("content-type", "application/json")]
    if answer.challenge:
        challenge = 'Bearer realm="keygate"' + (', error="invalid_token"' if key_presented else "")
        headers.append(_header("www-authenticate", challenge))
    if answer.retry_after and retry_after is not None:
        headers.append(_header("retry-after", retry_after))
    headers += [_header(name, value) for name, value in more]
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.Code.Value(answer.rpc), message=message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=answer.http_status),
            headers=headers,
            body=orjson.dumps({"code": code, "message": message}).decode(),
        ),
        dynamic_metadata=_metadata(code, key_id, workspace_id, current_request_id()),  # refusals are logged
    )


class DisguisedKey(Exception):
    """A query parameter whose name is the key parameter only once percent-decoded: Envoy strips
    parameters by their literal name, so such a key would travel upstream."""


Carriers = tuple[str, ...]  # the headers, or query parameters, that may carry a key: all are stripped


@dataclass(frozen=True, slots=True)
class _Template(Rendered):
    """A prebuilt OK (`sent`: serialized; `response`: the message, for a copy that adds to it) and what
    else it was built for (see `EnvoyAuthzServicer._allowed`)."""

    headers: Carriers
    query: Carriers
    upstream: str
    response: external_auth_pb2.CheckResponse


def _client_address(attributes: attribute_context_pb2.AttributeContext) -> str:
    return attributes.source.address.socket_address.address


class EnvoyAuthzServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer, routes: RouteTable,
                 upstream: UpstreamCredentials | None = None) -> None:
        self._authorizer = authorizer
        self._routes = routes
        self._upstream = upstream  # None: allowed requests travel on without a credential
        self._templates: Replies[_Template] = Replies()  # the OK templates (see `_allowed`)
        # The carrier tuples, made once: `_take_key` hands out these very objects.
        self._both: Carriers = ("authorization", routes.key_header)
        self._custom: Carriers = (routes.key_header,)
        self._query_carrier: Carriers = (routes.query_parameter,)

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse | bytes:
        attributes = request.attributes  # each step into the request is a wrapper object made: read it once
        http = attributes.request.http
        headers = http.headers
        path = http.path
        query = ""
        if "?" in path:
            path, _, query = path.partition("?")
        match = self._routes.match(http.method, path)
        try:
            key, carriers, query_carriers = self._take_key(headers, query,
                                                           match is not None and match.route.query_key)
        except DisguisedKey:
            return _denied(_BAD_REQUEST, "INVALID_ARGUMENT",
                           f"percent-encode no part of the {self._routes.query_parameter!r} parameter's name")
        if match is None:
            if self._routes.public_without_rule(http.method, path):  # web UI pages, CORS preflights
                return self._pass(PUBLIC_ROUTE, carriers, query_carriers)
            if self._routes.allow_unmatched:  # passed on as it came, minus keys and forged identity
                return self._pass(UNMATCHED_ALLOWED, carriers, query_carriers)
            return _denied(_NOT_ROUTED, "NO_MATCHING_ROUTE", f"no route rule covers {http.method} {redact(path)}")
        access = match.route.access
        if access is not KEY:
            if access is PUBLIC:  # the upstream decides alone: no identity, no credential
                return self._pass(PUBLIC_ROUTE, carriers, query_carriers)
            # REFUSED; the path itself may hold a key, so it is not echoed
            return _denied(_NOT_ROUTED, "ROUTE_REFUSED", "keygate does not pass this route on (see its route rules)")

        if not key and self._routes.session_call(headers):  # the upstream verifies its session
            return self._pass(UPSTREAM_SESSION, carriers, query_carriers)

        workspace_header = self._routes.workspace_header
        workspace = headers[workspace_header] if workspace_header and workspace_header in headers else ""
        # Without the client address: reading it walks three more wrappers, and only a key with
        # allowed_cidrs needs it (then `recall` reads it, and `check` always gets it).
        item = CheckItem(match.resource, match.route.action, workspace) if workspace else match.item
        try:
            decision = (self._authorizer.recall(key, item, _client_address, attributes)
                        or await self._authorizer.check(
                            key, item._replace(client_address=_client_address(attributes))))
        except InvalidArgument as exc:
            return _denied(_BAD_REQUEST, "INVALID_ARGUMENT", exc.message)
        except Unavailable:
            return _denied(_CANNOT_DECIDE, "UNAVAILABLE", "keygate cannot decide right now; retry shortly")
        credential = decision.credential
        if decision.code is not _OK_CODE or credential is None:
            return self._refuse(decision, key)
        upstream = ""
        if self._upstream is not None:
            upstream = self._upstream.for_workspace(credential.workspace_id) or ""
            if not upstream:
                return _denied(_NO_CREDENTIAL, "UPSTREAM_CREDENTIAL_MISSING",
                               "keygate has no upstream credential for this key's workspace",
                               key_id=credential.key_id_text, workspace_id=credential.workspace_id)
        return self._allowed(decision, credential, carriers, query_carriers, upstream)

    def _allowed(self, decision: Decision, credential: Credential, carriers: Carriers, query_carriers: Carriers,
                 upstream: str) -> external_auth_pb2.CheckResponse | bytes:
        """The OK for this decision: built and serialized once per Decision object, upstream credential and
        set of stripped carriers (building it afresh was most of this servicer's time; see replies.py) and
        sent as those bytes, or copied with the decision id filled in when keygate logs the call
        (`KEYGATE_ACCESS_LOG=all`). Replies are never mutated once built. A limited key's reply carries its
        limits in the metadata, and (copied per request) the RateLimit headers for the client."""
        held = self._templates.get(id(decision))
        if (held is None or held.decision is not decision or held.headers is not carriers
                or held.query is not query_carriers or held.upstream != upstream):
            template = self._template(credential, carriers, query_carriers, upstream)
            held = self._templates.keep(_Template(decision, template.SerializeToString(), carriers, query_carriers,
                                                  upstream, template))
        _decide(_OK)
        decision_id = assigned_request_id()
        usage = decision.usage
        if not decision_id and usage is None:
            return held.sent
        response = external_auth_pb2.CheckResponse()
        response.CopyFrom(held.response)
        if decision_id:
            response.dynamic_metadata.fields["decision_id"].string_value = decision_id
        if usage is not None:
            response.ok_response.response_headers_to_add.extend(
                _header(name, value) for name, value in limit_headers(usage, utcnow()))
        return response

    def _template(self, credential: Credential, carriers: Carriers, query_carriers: Carriers,
                  upstream: str) -> external_auth_pb2.CheckResponse:
        identity = [
            _header("x-keygate-key-id", credential.key_id_text),
            _header("x-keygate-workspace-id", credential.workspace_id),
            _header("x-keygate-key-name", quote(credential.key_name, safe=_PRINTABLE_ASCII)),
        ]
        if upstream:
            identity.append(_header("authorization", upstream))
        return self._ok(identity, carriers, query_carriers,
                        _metadata(_OK, credential.key_id_text, credential.workspace_id, limits=credential.limits))

    def _pass(self, word: str, carriers: Carriers, query_carriers: Carriers) -> external_auth_pb2.CheckResponse:
        """Passed on without a key decision (`word` says why: a public route or page, the upstream's own
        session, an unmatched request allowed): no identity or credential, every key carrier removed."""
        _decide(word)
        return self._ok([], carriers, query_carriers, _metadata(word, decision_id=assigned_request_id()))

    def _ok(self, identity: list[base_pb2.HeaderValueOption], carriers: Carriers, query_carriers: Carriers,
            metadata: struct_pb2.Struct) -> external_auth_pb2.CheckResponse:
        """Allow, with the identity headers (and credential) set, or, without identity, any forged ones removed.
        With identity, the upstream-session marker goes too: the upstream must check the credential keygate
        decided on, not a session riding along. A header set is not also removed: Envoy removes after it sets."""
        setting = {option.header.key for option in identity}
        if identity:
            session = self._routes.upstream_session
            removed = [h for h in (*carriers, *((session[0],) if session else ())) if h not in setting]
        else:
            removed = [*carriers, *IDENTITY_HEADERS]
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=identity, headers_to_remove=removed, query_parameters_to_remove=query_carriers),
            dynamic_metadata=metadata,
        )

    def _take_key(self, headers: Mapping[str, str], query: str,
                  query_allowed: bool) -> tuple[str, Carriers, Carriers]:
        """The presented key (Bearer first, then the key header, then, where allowed, the query) and the
        headers and query parameters that may carry one, all to be stripped. The carriers are the tuples
        the servicer made once, so a template is found again by their identity (see `_allowed`).

        With a Bearer key both key headers are stripped, whether or not the other came: Envoy removing an
        absent header costs nothing, and the usual request then reads one header, not two."""
        # `in`, then `[]`: the request map's `get` takes twice as long, whether or not the header came.
        authorization = headers["authorization"] if "authorization" in headers else ""  # noqa: SIM401
        if authorization.startswith("Bearer ") and not query:  # the usual request
            key = authorization[7:].strip()
            if key:
                return key, self._both, ()
        key = ""
        scheme, _, token = authorization.partition(" ")
        bearer = scheme.lower() == "bearer"
        if bearer:
            key = token.strip()
        custom = headers.get(self._routes.key_header, "")
        if custom:
            key = key or custom.strip()
        carriers = self._both if bearer else (self._custom if custom else ())  # another scheme travels on
        if not query:
            return key, carriers, ()
        name, in_query = self._routes.query_parameter, False
        for part in query.split("&"):
            raw_name, _, value = part.partition("=")
            if raw_name == name:
                in_query = True  # stripped even where not accepted: keep it out of upstream logs
                if query_allowed and not key:
                    key = unquote_plus(value)
            elif unquote(raw_name) == name:
                raise DisguisedKey
        return key, carriers, self._query_carrier if in_query else ()

    @staticmethod
    def _refuse(decision: Decision, key: str) -> external_auth_pb2.CheckResponse:
        credential = decision.credential
        retry: str | None = RETRY_AFTER_SECONDS
        more: list[tuple[str, str]] = []
        if decision.usage is not None:  # refused by a limit: when to retry, and the RateLimit headers
            now = utcnow()
            retry, more = retry_after(decision, now), limit_headers(decision.usage, now)
        return _denied(
            CODES[decision.code], decision.code.value, decision.reason, key_presented=bool(key),
            key_id=credential.key_id_text if credential else "",
            workspace_id=credential.workspace_id if credential else "", retry_after=retry, more=more,
        )
