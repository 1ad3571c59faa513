"""Logging: structlog, one JSON object per line on stderr (stdout stays free for `bootstrap`'s key).

Two pipelines. Application events (start, stop, warnings, failures) are written at once.
The access log is the high-volume one: it has its own minimal chain and a buffer that
`flush` writes out (the server flushes every 100 ms and on shutdown).

What the access log holds is the operator's policy (KEYGATE_ACCESS_LOG). By default
(`denials`) it is what an operator reads: every call except the allowed answers of the
high-volume reads (Check, BatchCheck, ext_authz, health probes), which metrics count;
refusals and errors are bounded per kind, with a line saying how many were suppressed.
A line per allowed Check was a quarter of keygate's CPU per Check; like OPA's decision
logs and SpiceDB's request logs, full logging is opt-in (`all`).

No key may reach a log, whoever put it where. The access chain writes only fields keygate
controls (method, code, latency, a request id that cannot be key-shaped). The application
chain, which also carries other libraries' records (grpc, asyncpg) and tracebacks, replaces
anything key-shaped in each rendered line; bytes that grpc prints (metadata values as they
arrived) are withheld whole; and each kind of standard-library record is bounded in rate,
so a peer that makes a library complain cannot flood the log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import orjson
import structlog

from .domain import errors
from .domain.errors import KEY_SHAPED

ACCESS_BUFFER_LIMIT = 64 * 1024
REDACTED = errors.REDACTED.encode()
THROTTLE_LIMIT = 5  # lines of one kind ...
THROTTLE_WINDOW_SECONDS = 10.0  # ... per window
THROTTLE_MAX_KINDS = 1000
ACCESS_POLICIES = ("denials", "all", "off")  # the first is the default
REFUSAL_LINES_PER_SECOND = 20  # per (method, status, decision) under `denials`
_KEY_SHAPED_BYTES = re.compile(KEY_SHAPED.pattern.encode())


class BufferedLines:
    """A structlog logger that collects rendered lines and writes them in batches."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._size = 0

    def msg(self, message: bytes) -> None:
        self._lines.append(message)
        self._size += len(message)
        if self._size >= ACCESS_BUFFER_LIMIT:
            self.flush()

    debug = info = warning = error = critical = exception = msg

    def flush(self) -> None:
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()


class _Logs:
    access: BufferedLines = BufferedLines(sys.stderr.buffer)
    level: int = logging.INFO


def configure(level: str = "info", stream: BinaryIO | None = None, *, access: str = ACCESS_POLICIES[0]) -> None:
    """Loggers obtained after this call write to `stream` (default: stderr) at `level` and above, and
    the access log follows the policy `access` (one of ACCESS_POLICIES)."""
    flush(final=True)
    out = stream or sys.stderr.buffer
    _Logs.level = logging.getLevelNamesMapping()[level.upper()]
    _Logs.access = BufferedLines(out)
    ACCESS.follow(access)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_redacted_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_Logs.level),
        logger_factory=structlog.BytesLoggerFactory(out),
        # Application events are rare: not caching lets every later `configure` (a test's capture
        # included) reach loggers already used, instead of leaving them writing to the old stream.
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(handlers=[_ToStructlog()], level=max(_Logs.level, logging.WARNING), force=True)


class _CurrentAccess:
    """Forwards to the access buffer of the latest `configure`, so loggers made earlier follow it."""

    def msg(self, message: bytes) -> None:
        _Logs.access.msg(message)

    info = msg


def _redacted_json(event: Any, **options: Any) -> bytes:
    """The application chain's renderer: JSON with every key-shaped run replaced (inside a string it stays
    valid JSON). Only application events pay for the scan; they are few."""
    return _KEY_SHAPED_BYTES.sub(REDACTED, orjson.dumps(event, **options))


@dataclass(slots=True)
class _Window:
    start: float
    admitted: int = 1
    dropped: int = 0


class Throttle:
    """At most `limit` lines of each kind per `window` seconds; the first line of a later window says how many
    were dropped. Kinds are few (a method, a log call site); past `max_kinds` the count starts over."""

    def __init__(self, limit: int = THROTTLE_LIMIT, window: float = THROTTLE_WINDOW_SECONDS,
                 max_kinds: int = THROTTLE_MAX_KINDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[Hashable, _Window] = {}

    def ended(self, *, all_windows: bool = False) -> list[tuple[Hashable, int]]:
        """Each kind whose window ended (or, with `all_windows`, any window) with lines dropped, and how
        many; forgotten here, so that every drop is reported once."""
        now = self._clock()
        found = [(kind, w.dropped) for kind, w in self._kinds.items()
                 if w.dropped and (all_windows or now - w.start >= self._window)]
        for kind, _ in found:
            del self._kinds[kind]
        return found

    def admit(self, kind: Hashable) -> int | None:
        """None: drop this line. Otherwise log it, with the number dropped before it (0 usually)."""
        now = self._clock()
        window = self._kinds.get(kind)
        if window is None or now - window.start >= self._window:
            if window is None and len(self._kinds) >= self._max_kinds:
                self._kinds.clear()
            self._kinds[kind] = _Window(now)
            return 0 if window is None else window.dropped
        if window.admitted < self._limit:
            window.admitted += 1
            return 0
        window.dropped += 1
        return None


def _withheld(arg: object) -> object:
    return f"<{len(arg)} bytes withheld>" if isinstance(arg, bytes | bytearray) else arg


def _message(record: logging.LogRecord) -> str:
    """`record.getMessage()`, with bytes arguments withheld (and the bare template if they do not fit it)."""
    args = record.args
    if not args:
        return str(record.msg)
    kept = {k: _withheld(v) for k, v in args.items()} if isinstance(args, Mapping) else tuple(map(_withheld, args))
    try:
        return str(record.msg) % kept
    except (TypeError, ValueError, KeyError):
        return str(record.msg)


class _ToStructlog(logging.Handler):
    """Standard-library records (asyncpg, grpc) as structlog events: one JSON line each, even with a traceback.

    Bytes arguments are withheld: grpc formats metadata values it cannot decode (a whole
    `authorization` header) into its messages. An exception from decoding a peer's bytes is the
    peer's mistake: its type is logged, not a traceback. Each call site is throttled.
    """

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def emit(self, record: logging.LogRecord) -> None:
        dropped = self._throttle.admit((record.name, record.pathname, record.lineno))
        if dropped is None:
            return
        fields: dict[str, object] = {"logger": record.name}
        if dropped:
            fields["dropped_before"] = dropped
        level, exc_info = record.levelno, record.exc_info or False
        if record.exc_info and isinstance(record.exc_info[1], UnicodeDecodeError):
            level, exc_info, fields["error"] = logging.WARNING, False, "UnicodeDecodeError"
        structlog.get_logger(record.name).log(level, _message(record), exc_info=exc_info, **fields)


class AccessLog:
    """The per-RPC log of this process, under the policy of the latest `configure` (servers built before
    it follow it too).

    Lines carry only fields keygate controls: method, status, decision code, latency, request id.
    Under `denials`, `refused` lines (a refusing decision or a status other than OK) are admitted
    at most REFUSAL_LINES_PER_SECOND a second per (method, status, decision): a flood of bad keys
    costs a bounded log, and an `rpc_suppressed` line counts what was left out, once its second is
    over (at the next flush) or at shutdown.
    """

    def __init__(self) -> None:
        self.follow(ACCESS_POLICIES[0])

    def follow(self, policy: str) -> None:
        if policy not in ACCESS_POLICIES:
            raise ValueError(f"access log policy {policy!r} is not one of {ACCESS_POLICIES}")
        self.enabled = policy != "off"
        self.log_all = policy == "all"
        self._throttle = Throttle(REFUSAL_LINES_PER_SECOND, 1.0)
        self._log = structlog.wrap_logger(
            _CurrentAccess(),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_Logs.level),
            cache_logger_on_first_use=True,
        )

    def write(self, method: str, code: str, decision: str, latency_ms: float, request_id: str,
              *, refused: bool) -> None:
        if refused and not self.log_all:
            dropped = self._throttle.admit((method, code, decision))
            if dropped is None:
                return
            if dropped:
                self._suppressed((method, code, decision), dropped)
        fields = {"decision": decision} if decision else {}
        self._log.info("rpc", method=method, code=code, **fields, latency_ms=latency_ms, request_id=request_id)

    def report_suppressed(self, *, final: bool = False) -> None:
        """An `rpc_suppressed` line per kind whose second ended with lines left out (`final`: every kind)."""
        for kind, dropped in self._throttle.ended(all_windows=final):
            self._suppressed(kind, dropped)

    def _suppressed(self, kind: Hashable, dropped: int) -> None:
        method, code, decision = cast(tuple[str, str, str], kind)  # the kinds this log admits (above)
        fields = {"decision": decision} if decision else {}
        self._log.info("rpc_suppressed", method=method, code=code, **fields, suppressed=dropped,
                       limit_per_second=REFUSAL_LINES_PER_SECOND)


ACCESS = AccessLog()


def flush(*, final: bool = False) -> None:
    """Write out buffered access lines, after the count of lines suppressed in the last second
    (`final`, at shutdown: of every line suppressed so far)."""
    ACCESS.report_suppressed(final=final)
    _Logs.access.flush()
