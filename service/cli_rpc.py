"""`keygate keys ...` (the admin client for KeyService), `keygate check` (AuthzService.Check),
`keygate permissions` (AuthzService.ListPermissions) and `keygate health` (grpc.health.v1).

The caller's key comes only from KEYGATE_API_KEY: a flag would leak it into shell history and
`ps`. Each subcommand is data (an RPC, a request builder, a renderer) run by one function, so
connecting, authenticating, paging and error reporting live in exactly one place.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as default
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from .client.settings import DEFAULT_SERVER, SERVER_ENV
from .domain.errors import InvalidArgument
from .domain.policy import UPDATABLE_FIELDS
from .tls import ClientTLS
from .v1 import authz_pb2, authz_pb2_grpc, keys_pb2, keys_pb2_grpc

API_KEY_ENV = "KEYGATE_API_KEY"
DEFAULT_TIMEOUT = 10.0


_M = TypeVar("_M", bound=Message)


class UsageError(Exception):
    """A command line argparse accepted but the command cannot act on (exit 2)."""


class _Cleared:
    """Sentinel stored by --clear-*/--no-expiry: name the field in the mask but send it unset."""

    def __repr__(self) -> str:
        return "CLEARED"


CLEARED = _Cleared()


# --- argument types -----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`0`, `90s`, `15m`, `12h`, `7d`: one number and one unit, so nothing is ambiguous."""
    if text.strip() == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: 0, or a number with s, m, h or d (15m, 7d)")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def parse_time(text: str, direction: int = 1, now: datetime | None = None) -> datetime:
    """An RFC 3339 time with an explicit offset, or a duration from now (`direction` -1: ago).

    Naive times are refused: guessing the zone of an expiry is how keys live an hour too long.
    """
    now = now or datetime.now(UTC).replace(microsecond=0)
    if _DURATION.fullmatch(text.strip()):
        try:
            return now + direction * parse_duration(text)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} is too far from now") from None
    try:
        when = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an RFC 3339 time (2027-01-01T00:00:00Z) "
                                         "nor a duration (30d, 12h, 15m, 90s)") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or e.g. +02:00")
    return when


def _timestamp_arg(direction: int) -> Callable[[str], timestamp_pb2.Timestamp]:
    """An argparse type for a time option; relative values count forward (+1) or back (-1)."""

    def convert(text: str) -> timestamp_pb2.Timestamp:
        stamp = timestamp_pb2.Timestamp()
        try:
            stamp.FromDatetime(parse_time(text, direction))
        except (OverflowError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is outside the years 1 to 9999") from None
        return stamp

    return convert


def duration_arg(text: str) -> duration_pb2.Duration:
    """argparse type: a Duration message from parse_duration's syntax."""
    duration = duration_pb2.Duration()
    duration.FromTimedelta(parse_duration(text))
    return duration


def rate_limit_arg(text: str) -> keys_pb2.RateLimit:
    """argparse type: `name=limit/window`, e.g. `per-minute=100/1m` (the server checks the values)."""
    name, sep, rest = text.partition("=")
    count, slash, window = rest.partition("/")
    if not sep or not slash or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not name=limit/window, e.g. per-minute=100/1m")
    return keys_pb2.RateLimit(name=name, limit=int(count), window=duration_arg(window))


def credits_arg(text: str) -> keys_pb2.Credits:
    """argparse type: `remaining` or `remaining:refill_amount/refill_interval`, e.g. 1000 or 1000:1000/30d."""
    remaining, colon, refill = text.partition(":")
    amount, slash, interval = refill.partition("/")
    if not remaining.isdigit() or (colon and (not slash or not amount.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not remaining or remaining:amount/interval, e.g. 1000:1000/30d")
    if not colon:
        return keys_pb2.Credits(remaining=int(remaining))
    return keys_pb2.Credits(remaining=int(remaining), refill_amount=int(amount), refill_interval=duration_arg(interval))


def metadata_arg(text: str) -> tuple[str, str]:
    """argparse type: `key=value` (the value may itself contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def _positive(kind: Callable[[str], float | int], zero: bool = False) -> Callable[[str], Any]:
    """An argparse type accepting only positive numbers of `kind` (and 0 if `zero`)."""

    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        allowed = value >= 0 if zero else value > 0
        if not allowed or value == math.inf:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'non-negative' if zero else 'positive'} number")
        return value

    return convert


# --- requests from arguments --------------------------------------------------------------


def assign(message: Message, name: str, value: object) -> None:
    """Set one field whatever its kind; CLEARED leaves it unset (and emptied)."""
    field = message.DESCRIPTOR.fields_by_name[name]
    target = getattr(message, name)
    if value is CLEARED:
        message.ClearField(name)
    elif field.message_type is not None and field.message_type.GetOptions().map_entry:
        target.update(dict(value))  # type: ignore[call-overload]  # a map field: `value` is a Mapping
    elif field.is_repeated:
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, name, value)


def fill(message: _M, args: argparse.Namespace, fields: Iterable[str]) -> _M:
    """Copy the options the user gave (not None) into same-named request fields."""
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            assign(message, name, value)
    return message


def _from_args(request_type: type[_M], *fields: str) -> Callable[[argparse.Namespace], _M]:
    """A request builder for commands whose options map one-to-one onto request fields."""
    return lambda args: fill(request_type(), args, fields)


def build_update(args: argparse.Namespace) -> keys_pb2.UpdateKeyRequest:
    """The mask names exactly the fields whose options were given, so nothing else is touched."""
    key = fill(keys_pb2.ApiKey(id=args.id, etag=args.etag or ""), args, UPDATABLE_FIELDS)
    paths = [name for name in UPDATABLE_FIELDS if getattr(args, name, None) is not None]
    if not paths:
        raise UsageError("nothing to change: give at least one of --name, --description, --permission, "
                         "--resource, --clear-resources, --expire-time, --no-expiry, --disable, --enable, "
                         "--metadata, --clear-metadata, --allowed-cidr, --clear-allowed-cidrs")
    request = keys_pb2.UpdateKeyRequest(key=key)
    request.update_mask.paths.extend(paths)
    return request


# --- output -------------------------------------------------------------------------------

_Column = tuple[str, Callable[[Any], str]]


def _text(value: str) -> str:
    """Escape control characters: a key name must not be able to rewrite the admin's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value) or "-"


def _list(values: Iterable[str]) -> str:
    return ",".join(values)


def _when(message: Message, field: str, unset: str = "-") -> str:
    if not message.HasField(field):
        return unset
    when: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _workspace(key: keys_pb2.ApiKey) -> str:
    return key.workspace_id or ("* (root)" if key.root else "")


def print_table(columns: Sequence[_Column], items: Sequence[Any], empty: str) -> None:
    """Aligned columns sized to their content; the last column is left ragged."""
    if not items:
        print(empty, file=sys.stderr)
        return
    rows = [[title for title, _ in columns]] + [[_text(get(item)) for _, get in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) - 1)]
    for row in rows:
        print("  ".join([cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [row[-1]]))


def print_block(fields: Sequence[_Column], item: Any) -> None:
    """One record as `label: value` lines, for commands that return a single thing."""
    labels = [label.lower().replace("_", " ") + ":" for label, _ in fields]
    width = max(map(len, labels))
    for label, (_, get) in zip(labels, fields, strict=True):
        print(f"{label:<{width}} {_text(get(item))}")


KEY_COLUMNS: tuple[_Column, ...] = (
    ("ID", lambda k: k.id),
    ("NAME", lambda k: k.name),
    ("WORKSPACE", _workspace),
    ("DISPLAY", lambda k: k.display),
    ("PERMISSIONS", lambda k: _list(k.permissions)),
    ("EXPIRES", lambda k: _when(k, "expire_time", "never")),
    ("OLD_SECRET_UNTIL", lambda k: _when(k, "previous_secret_expire_time")),
    ("DISABLED", lambda k: "yes" if k.disabled else "no"),
)

def _span(duration: duration_pb2.Duration) -> str:
    """A whole-seconds Duration in the largest unit that divides it, as --rate-limit and --credits take it."""
    seconds = duration.seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _credits(key: keys_pb2.ApiKey) -> str:
    if not key.HasField("credits"):
        return "(no quota)"
    credits = key.credits
    if not credits.refill_amount:
        return f"{credits.remaining} left"
    return (f"{credits.remaining} left, set back to {credits.refill_amount} every "
            f"{_span(credits.refill_interval)} (next {_when(credits, 'refill_time')})")


KEY_FIELDS: tuple[_Column, ...] = (
    ("id", lambda k: k.id),
    ("name", lambda k: k.name),
    ("description", lambda k: k.description),
    ("workspace", _workspace),
    ("root", lambda k: "yes" if k.root else "no"),
    ("display", lambda k: k.display),
    ("permissions", lambda k: _list(k.permissions)),
    ("resources", lambda k: _list(k.resources) or "(every resource of the workspace)"),
    ("expires", lambda k: _when(k, "expire_time", "never")),
    ("old secret until", lambda k: _when(k, "previous_secret_expire_time", "(no rotated secret still works)")),
    ("disabled", lambda k: "yes" if k.disabled else "no"),
    ("created", lambda k: _when(k, "create_time")),
    ("updated", lambda k: _when(k, "update_time")),
    ("last used", lambda k: _when(k, "last_used_time", "never")),
    ("usage count", lambda k: str(k.usage_count)),
    ("created by", lambda k: k.created_by),
    ("metadata", lambda k: _list(f"{name}={value}" for name, value in sorted(k.metadata.items()))),
    ("allowed cidrs", lambda k: _list(k.allowed_cidrs) or "(any address)"),
    ("rate limits", lambda k: _list(f"{r.name}={r.limit}/{_span(r.window)}" for r in k.rate_limits) or "(none)"),
    ("credits", _credits),
    ("etag", lambda k: k.etag),
)

BINDING_COLUMNS: tuple[_Column, ...] = (
    ("RESOURCE", lambda b: b.resource),
    ("KEY_ID", lambda b: b.key_id),
    ("ACTIONS", lambda b: _list(b.actions)),
    ("WORKSPACE", lambda b: b.workspace_id),
    ("CREATED", lambda b: _when(b, "create_time")),
    ("CREATED_BY", lambda b: b.created_by),
)

AUDIT_COLUMNS: tuple[_Column, ...] = (
    ("TIME", lambda e: _when(e, "event_time")),
    ("ACTION", lambda e: e.action),
    ("OUTCOME", lambda e: e.outcome),
    ("ACTOR", lambda e: e.actor_key_id),
    ("WORKSPACE", lambda e: e.workspace_id),
    ("TARGET", lambda e: e.target_key_id),
    ("RESOURCE", lambda e: e.resource),
    ("CHANGED", lambda e: _list(e.changed_fields)),
    ("REASON", lambda e: e.reason),
)

Renderer = Callable[[argparse.Namespace, Any], None]


def _table(items_field: str, columns: Sequence[_Column], empty: str) -> Renderer:
    """A renderer for list responses, with a hint when a page was left unfetched."""

    def render(args: argparse.Namespace, response: Any) -> None:
        print_table(columns, getattr(response, items_field), empty)
        if getattr(response, "next_page_token", ""):
            print(f"more results: --page-token {response.next_page_token} for the next page, --all for every page",
                  file=sys.stderr)

    return render


def _block(fields: Sequence[_Column]) -> Renderer:
    """A renderer for commands that answer with one record."""
    return lambda args, response: print_block(fields, response)


def _render_issued(args: argparse.Namespace, response: keys_pb2.CreateKeyResponse) -> None:
    """The only place the plaintext key is printed: the server keeps no copy of it."""
    print_block(KEY_FIELDS, response.key)
    print()
    print(f"api_key: {response.api_key}")
    print("warning: this API key is shown only once and cannot be retrieved again; store it now.", file=sys.stderr)


def _render_rotated(args: argparse.Namespace, response: keys_pb2.CreateKeyResponse) -> None:
    """The new secret, and when the one it replaces stops working: the date the owner must switch by."""
    _render_issued(args, response)
    if response.key.HasField("previous_secret_expire_time"):
        print(f"the previous secret keeps working until {_when(response.key, 'previous_secret_expire_time')}",
              file=sys.stderr)
    else:
        print("the previous secret no longer works", file=sys.stderr)


PERMISSION_COLUMNS: tuple[_Column, ...] = (
    ("PERMISSION", lambda p: p.name),
    ("ACTS_ON", lambda p: _list(p.collections)),
    ("DESCRIPTION", lambda p: p.description),
    ("IMPLIES", lambda p: _list(p.implies)),  # last: a wildcard implies a long list
)


def _say(template: str) -> Renderer:
    """A renderer for empty responses: confirm what was done, in the user's own terms."""
    return lambda args, response: print(template.format(**{k: _text(str(v)) for k, v in vars(args).items()}))


def print_json(message: Message) -> None:
    """Proto field names and every non-optional field, so scripts see a stable shape."""
    text = json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    print(text)


# --- calling the server -------------------------------------------------------------------


class Client:
    """Both services, with the caller's key (if any) and the deadline attached to every call."""

    def __init__(self, channel: grpc.Channel, api_key: str, timeout: float) -> None:
        self._stubs = {
            "KeyService": keys_pb2_grpc.KeyServiceStub(channel),
            "AuthzService": authz_pb2_grpc.AuthzServiceStub(channel),
            "Health": health_pb2_grpc.HealthStub(channel),
        }
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    def call(self, method: str, request: Message, service: str = "KeyService") -> Any:
        stub = self._stubs[service]
        return getattr(stub, method)(request, timeout=self._timeout, metadata=self._metadata)

    def call_all_pages(self, method: str, request: Any) -> Any:
        """Follow next_page_token, merging pages into one response (a repeated token stops it)."""
        merged = self.call(method, request)
        seen: set[str] = set()
        token = merged.next_page_token
        while token and token not in seen:
            seen.add(token)
            request.page_token = token
            page = self.call(method, request)
            merged.MergeFrom(page)
            token = page.next_page_token
        merged.next_page_token = ""
        return merged


def report_rpc_error(err: grpc.RpcError, server: str, timeout: float) -> None:
    """`error: STATUS: details`, then each field violation the details do not already say.

    UNAVAILABLE has two causes a user fixes differently: no keygate at the address (grpc's own status,
    without details), or keygate answering that it cannot decide now, its database being unreachable
    (keygate's status, which always carries google.rpc details).
    """
    call = err if isinstance(err, grpc.Call) else None
    code = call.code() if call else grpc.StatusCode.UNKNOWN
    details = (call.details() if call else None) or str(err)
    status = _rich_status(call)
    if code is grpc.StatusCode.UNAVAILABLE and status is None:
        details = f"cannot reach keygate at {server} (set --server or {SERVER_ENV}): {details}"
    elif code is grpc.StatusCode.UNAVAILABLE:
        details = f"keygate at {server} answered but cannot decide now: {details}"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer from {server} within {timeout:g}s (--timeout): {details}"
    print(f"error: {code.name}: {_text(details)}", file=sys.stderr)
    for violation in _field_violations(status):
        line = f"{violation.field}: {violation.description}"
        if not details.endswith(line):
            print(f"  {_text(line)}", file=sys.stderr)


def _rich_status(call: grpc.Call | None) -> Any:
    """The google.rpc.Status keygate attaches to its errors; None from grpc itself (or a proxy)."""
    try:
        return rpc_status.from_call(call) if call else None
    except ValueError:  # trailers disagree with the call's status: show the call's own
        return None


def _field_violations(status: Any) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """BadRequest violations from the rich status, if the server sent one."""
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend(bad_request.field_violations)
    return violations


def _done(response: Any) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: which RPC, how to build its request, how to show its answer, what to exit with."""

    method: str
    build: Callable[[argparse.Namespace], Message]
    render: Renderer
    paged: bool = False
    service: str = "KeyService"
    authenticated: bool = True  # sends KEYGATE_API_KEY as `authorization: Bearer`; Check carries its key inside
    prepare: Callable[[Client, Any], None] | None = None  # calls that complete the request, e.g. read an etag
    verdict: Callable[[Any], int] = _done  # the exit code of an answer
    failed: int = 1  # the exit code of an RPC error
    failed_with: Mapping[grpc.StatusCode, int] = default(default_factory=dict)  # ... but these statuses


def run(command: Command, prog: str, args: argparse.Namespace) -> int:
    """Build, authenticate, call, render: the exit code is 2 for usage, `command.failed` for an RPC error,
    else the answer's verdict."""
    try:
        request = command.build(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    api_key = os.environ.get(API_KEY_ENV, "").strip() if command.authenticated else ""
    if command.authenticated and not api_key:
        print(f"{prog}: error: set {API_KEY_ENV} to the API key to act with (it is never taken from the command "
              "line)", file=sys.stderr)
        return 2
    server = args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    try:
        channel = open_channel(server, args)
    except InvalidArgument as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return command.failed
    try:
        with channel:
            client = Client(channel, api_key, args.timeout)
            if command.prepare is not None:
                command.prepare(client, request)
            if command.paged and args.all:
                response = client.call_all_pages(command.method, request)
            else:
                response = client.call(command.method, request, command.service)
    except grpc.RpcError as err:
        report_rpc_error(err, server, args.timeout)
        return command.failed_with.get(err.code(), command.failed) if isinstance(err, grpc.Call) else command.failed
    if args.json:
        print_json(response)
    else:
        command.render(args, response)
    return command.verdict(response)


def open_channel(server: str, args: argparse.Namespace) -> grpc.Channel:
    """A channel with the TLS the options and environment ask for (plaintext when none);
    InvalidArgument naming the setting when a TLS file is missing or not what it should be."""
    tls = ClientTLS.from_env(enabled=getattr(args, "tls", None), ca=getattr(args, "tls_ca", None),
                             cert=getattr(args, "tls_client_cert", None), key=getattr(args, "tls_client_key", None),
                             server_name=getattr(args, "tls_server_name", None))
    return tls.channel(server)


# --- the command line ---------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The connection/output options; subcommands repeat them with SUPPRESS so either place works."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument("--server", metavar="ADDR", default=default(None),
                       help=f"keygate address (env {SERVER_ENV}, default {DEFAULT_SERVER})")
    group.add_argument("--tls", action="store_true", default=default(None),
                       help="use TLS even without --tls-ca, trusting grpc's default roots (env KEYGATE_TLS=on)")
    group.add_argument("--tls-ca", metavar="PEM", default=default(None),
                       help="CA that signed keygate's certificate; implies TLS (env KEYGATE_TLS_CA)")
    group.add_argument("--tls-client-cert", metavar="PEM", default=default(None),
                       help="client certificate for mTLS (env KEYGATE_TLS_CLIENT_CERT)")
    group.add_argument("--tls-client-key", metavar="PEM", default=default(None),
                       help="its private key (env KEYGATE_TLS_CLIENT_KEY)")
    group.add_argument("--tls-server-name", metavar="NAME", default=default(None),
                       help="name keygate's certificate must carry, if not the --server host "
                            "(env KEYGATE_TLS_SERVER_NAME)")
    group.add_argument("--json", action="store_true", default=default(False), help="print the response as JSON")
    group.add_argument("--timeout", metavar="SECONDS", type=_positive(float), default=default(DEFAULT_TIMEOUT),
                       help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})")


def _add_key_fields(parser: argparse.ArgumentParser) -> None:
    """Options shared by create and update; their dests are the ApiKey field names."""
    parser.add_argument("--description", help="free text for humans")
    parser.add_argument("--permission", dest="permissions", action="append", metavar="P",
                        help="e.g. chatflows:view; repeat for more (update: replaces them all)")
    parser.add_argument("--metadata", action="append", type=metadata_arg, metavar="K=V",
                        help="repeat for more (update: replaces them all)")
    parser.add_argument("--allowed-cidr", dest="allowed_cidrs", action="append", metavar="CIDR",
                        help="a client network the key may be used from, e.g. 203.0.113.0/24 or 2001:db8::/32; "
                             "repeat for more (update: replaces them all); none: any address")
    parser.add_argument("--rate-limit", dest="rate_limits", action="append", type=rate_limit_arg,
                        metavar="NAME=N/WINDOW", help="at most N requests per window, e.g. per-minute=100/1m; "
                                                      "repeat for more (update: replaces them all)")
    parser.add_argument("--credits", type=credits_arg, metavar="N[:AMOUNT/INTERVAL]",
                        help="a usage quota of N credits, set back to AMOUNT every INTERVAL if given, "
                             "e.g. 1000:1000/30d (update: sets the balance)")


PAGING_FIELDS = ("workspace_id", "page_size", "page_token")


def _add_paging(parser: argparse.ArgumentParser) -> None:
    """Options of the paged lists; their dests are PAGING_FIELDS."""
    parser.add_argument("--workspace", dest="workspace_id", metavar="W", help="narrow to a workspace (root callers)")
    parser.add_argument("--page-size", type=_positive(int, zero=True), metavar="N",
                        help="results per call: 1 to 1000, 0 for the server's default (50)")
    parser.add_argument("--page-token", metavar="TOKEN", help="continue where the previous page ended")
    parser.add_argument("--all", action="store_true", help="follow next_page_token to the last page")


def _configure_create(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("--name", required=True)
    _add_key_fields(parser)
    parser.add_argument("--resource", dest="resources", action="append", metavar="R",
                        help="limit the key to this resource, e.g. chatflows/abc or chatflows/*; repeat for more")
    parser.add_argument("--workspace", dest="workspace_id", metavar="W",
                        help="default: the caller's own; required for root callers")
    parser.add_argument("--expire-time", type=_timestamp_arg(1), metavar="T",
                        help="RFC 3339 time or from now: 30d, 12h")
    fields = ("name", "permissions", "resources", "workspace_id", "expire_time", "description", "metadata",
              "allowed_cidrs", "rate_limits", "credits")
    return Command("CreateKey", _from_args(keys_pb2.CreateKeyRequest, *fields), _render_issued)


def _configure_list(parser: argparse.ArgumentParser) -> Command:
    _add_paging(parser)
    build = _from_args(keys_pb2.ListKeysRequest, *PAGING_FIELDS)
    return Command("ListKeys", build, _table("keys", KEY_COLUMNS, "no keys"), paged=True)


def _configure_get(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("id", metavar="ID")
    return Command("GetKey", _from_args(keys_pb2.GetKeyRequest, "id"), _block(KEY_FIELDS))


def _configure_update(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--name", help="new name")
    _add_key_fields(parser)
    resources = parser.add_mutually_exclusive_group()
    resources.add_argument("--resource", dest="resources", action="append", metavar="R",
                           help="replace the scope; repeat for more")
    resources.add_argument("--clear-resources", dest="resources", action="store_const", const=CLEARED,
                           help="empty the scope: every resource of the workspace")
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expire-time", type=_timestamp_arg(1), metavar="T", help="RFC 3339 time or from now: 30d")
    expiry.add_argument("--no-expiry", dest="expire_time", action="store_const", const=CLEARED,
                        help="the key never expires")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True, help="refuse the key everywhere")
    state.add_argument("--enable", dest="disabled", action="store_const", const=False, help="accept the key again")
    parser.add_argument("--clear-metadata", dest="metadata", action="store_const", const=CLEARED,
                        help="remove every metadata entry")
    parser.add_argument("--clear-allowed-cidrs", dest="allowed_cidrs", action="store_const", const=CLEARED,
                        help="let the key be used from any address")
    parser.add_argument("--clear-rate-limits", dest="rate_limits", action="store_const", const=CLEARED,
                        help="remove every rate limit")
    parser.add_argument("--clear-credits", dest="credits", action="store_const", const=CLEARED,
                        help="remove the usage quota")
    parser.add_argument("--etag", help="refuse the update if the key changed since this etag was read")
    return Command("UpdateKey", build_update, _block(KEY_FIELDS))


def _configure_delete(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("id", metavar="ID")
    return Command("DeleteKey", _from_args(keys_pb2.DeleteKeyRequest, "id"), _say("deleted key {id}"))


def read_etag(client: Client, request: keys_pb2.RotateKeyRequest) -> None:
    """Rotate the key as read (unless --etag names the version): if another admin rotates or changes it
    in between, this rotation fails with ABORTED rather than both answering OK."""
    if not request.etag:
        request.etag = client.call("GetKey", keys_pb2.GetKeyRequest(id=request.id)).etag


def _configure_rotate(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--grace", dest="grace_period", type=duration_arg, metavar="DURATION",
                        help="how long the old secret keeps working: 0 (default), 90s, 15m, 12h, 7d")
    parser.add_argument("--etag", help="refuse the rotation if the key changed since this etag was read "
                                       "(default: the etag read just before rotating)")
    build = _from_args(keys_pb2.RotateKeyRequest, "id", "grace_period", "etag")
    return Command("RotateKey", build, _render_rotated, prepare=read_etag)


def _configure_bind(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("resource", metavar="RESOURCE", help="e.g. chatflows/abc")
    parser.add_argument("key_id", metavar="KEY_ID")
    parser.add_argument("--action", dest="actions", action="append", metavar="A",
                        help="the use the binding governs (default predictions:create); repeat for more")
    build = _from_args(keys_pb2.BindResourceRequest, "resource", "key_id", "actions")
    return Command("BindResource", build, _block(BINDING_COLUMNS))


def _configure_unbind(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("resource", metavar="RESOURCE")
    parser.add_argument("key_id", metavar="KEY_ID")
    build = _from_args(keys_pb2.UnbindResourceRequest, "resource", "key_id")
    return Command("UnbindResource", build, _say("unbound key {key_id} from {resource}"))


def _configure_bindings(parser: argparse.ArgumentParser) -> Command:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--resource", metavar="R")
    target.add_argument("--key", dest="key_id", metavar="KEY_ID")
    parser.add_argument("--workspace", dest="workspace_id", metavar="W",
                        help="required for root callers with --resource")
    build = _from_args(keys_pb2.ListBindingsRequest, "resource", "key_id", "workspace_id")
    return Command("ListBindings", build, _table("bindings", BINDING_COLUMNS, "no bindings"))


def _configure_audit(parser: argparse.ArgumentParser) -> Command:
    parser.add_argument("--key", dest="key_id", metavar="ID", help="events about this key")
    parser.add_argument("--actor", dest="actor_key_id", metavar="ID", help="events caused by this key")
    parser.add_argument("--action", metavar="A", help="the RPC, e.g. CreateKey")
    parser.add_argument("--since", dest="start_time", type=_timestamp_arg(-1), metavar="T",
                        help="inclusive; RFC 3339 or ago: 24h, 7d")
    parser.add_argument("--until", dest="end_time", type=_timestamp_arg(-1), metavar="T",
                        help="exclusive; RFC 3339 or ago: 1h")
    _add_paging(parser)
    fields = ("key_id", "actor_key_id", "action", "start_time", "end_time", *PAGING_FIELDS)
    build = _from_args(keys_pb2.ListAuditEventsRequest, *fields)
    return Command("ListAuditEvents", build, _table("events", AUDIT_COLUMNS, "no audit events"), paged=True)


SUBCOMMANDS: Mapping[str, tuple[str, Callable[[argparse.ArgumentParser], Command]]] = {
    "create": ("issue a key (the plaintext is shown once)", _configure_create),
    "list": ("list keys", _configure_list),
    "get": ("show one key", _configure_get),
    "update": ("change the named fields of a key", _configure_update),
    "delete": ("revoke a key at once", _configure_delete),
    "rotate": ("issue a new secret for a key", _configure_rotate),
    "bind": ("restrict a resource's use to bound keys", _configure_bind),
    "unbind": ("remove a binding", _configure_unbind),
    "bindings": ("list the bindings of a resource or a key", _configure_bindings),
    "audit": ("list audit events (needs logs:view)", _configure_audit),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `keys` and its subcommands; each sets func(args) -> exit code."""
    keys = subparsers.add_parser(
        "keys", help="manage API keys (admin client)",
        description=f"Manage keygate API keys. The calling key is read from {API_KEY_ENV} only.")
    _add_common(keys, defaults=True)
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    for name, (summary, configure) in SUBCOMMANDS.items():
        parser = commands.add_parser(name, help=summary, description=summary)
        command = configure(parser)
        _add_common(parser, defaults=False)
        parser.set_defaults(func=functools.partial(run, command, parser.prog))


# --- keygate check ----------------------------------------------------------------------------


def _build_check(args: argparse.Namespace) -> authz_pb2.CheckRequest:
    """The key to check comes from the environment variable named by --key-env, never from a flag."""
    api_key = os.environ.get(args.key_env, "").strip()
    if not api_key:
        raise UsageError(f"set {args.key_env} to the API key to check (or name another variable with --key-env)")
    return authz_pb2.CheckRequest(api_key=api_key, resource=args.resource, action=args.action,
                                  workspace_id=args.workspace_id, client_address=args.client_address, cost=args.cost)


def _render_check(args: argparse.Namespace, response: authz_pb2.CheckResponse) -> None:
    verdict = "allowed" if response.allowed else "denied"
    code = authz_pb2.DecisionCode.Name(response.code)
    who = f"key={_text(response.key_name)}  workspace={_text(response.workspace_id) or '*'}" if response.key_id else ""
    print(f"{verdict}  {code}  {response.http_status}  {who if response.allowed else _text(response.reason)}")


CHECK_EXIT_CODES = "exit status: 0 allowed, 1 denied, 2 no answer (a usage error, or an RPC error such as an unknown " \
                   "action or an unreachable server)"


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `check`: ask AuthzService whether a key may perform an action. The exit status is the answer,
    so a script can write `if keygate check ...`; an error is 2, never to be mistaken for a denial."""
    parser = subparsers.add_parser("check", help="ask whether a key may perform an action (AuthzService.Check)",
                                   description="Ask whether a key may perform an action.", epilog=CHECK_EXIT_CODES)
    parser.add_argument("--key-env", default=API_KEY_ENV, metavar="VAR",
                        help=f"environment variable holding the key to check (default {API_KEY_ENV})")
    parser.add_argument("--resource", default="", metavar="R",
                        help="e.g. chatflows/<id>; empty: the action on its whole collection(s)")
    parser.add_argument("--action", required=True, metavar="A", help="a catalog permission, e.g. predictions:create")
    parser.add_argument("--workspace", dest="workspace_id", default="", metavar="W")
    parser.add_argument("--client-address", default="", metavar="IP",
                        help="the end client's address, for a key with allowed_cidrs")
    parser.add_argument("--cost", type=_positive(int, zero=True), default=0, metavar="N",
                        help="credits this Check spends if allowed, for a key with credits (default 1)")
    _add_common(parser, defaults=True)
    command = Command("Check", _build_check, _render_check, service="AuthzService", authenticated=False,
                      verdict=lambda response: 0 if response.allowed else 1, failed=2)
    parser.set_defaults(func=functools.partial(run, command, parser.prog))


def add_permissions_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `permissions`: the catalog a key's permissions are chosen from (AuthzService.ListPermissions)."""
    summary = "list the permissions keys can be granted, what each implies and acts on"
    parser = subparsers.add_parser("permissions", help=summary, description=f"{summary.capitalize()}. "
                                   f"Any live key may ask; it is read from {API_KEY_ENV}.")
    _add_common(parser, defaults=True)
    command = Command("ListPermissions", lambda args: authz_pb2.ListPermissionsRequest(),
                      _table("permissions", PERMISSION_COLUMNS, "no permissions"), service="AuthzService")
    parser.set_defaults(func=functools.partial(run, command, parser.prog))


def _render_health(args: argparse.Namespace, response: health_pb2.HealthCheckResponse) -> None:
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


HEALTH_EXIT_CODES = "exit status: 0 SERVING, 1 another status or a service keygate does not serve, 2 no answer " \
                    "(keygate unreachable, or slower than --timeout)"


def add_health_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `health`: grpc.health.v1 Check with the client's own connection options, for container
    health checks and for probes over TLS (kubelet's grpc probe does not speak it). Needs no key."""
    summary = "ask whether keygate, or one of its services, is serving (grpc.health.v1)"
    parser = subparsers.add_parser("health", help=summary, description=f"{summary.capitalize()}.",
                                   epilog=HEALTH_EXIT_CODES)
    parser.add_argument("--service", default="", metavar="NAME",
                        help='e.g. keygate.v1.KeyService (default "": the process as a whole)')
    _add_common(parser, defaults=True)
    command = Command("Check", lambda args: health_pb2.HealthCheckRequest(service=args.service), _render_health,
                      service="Health", authenticated=False,
                      verdict=lambda response: 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1,
                      failed=2, failed_with={grpc.StatusCode.NOT_FOUND: 1})
    parser.set_defaults(func=functools.partial(run, command, parser.prog))


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Every client command: `keys ...`, `check`, `permissions`, `health`."""
    add_parser(subparsers)
    add_check_parser(subparsers)
    add_permissions_parser(subparsers)
    add_health_parser(subparsers)
