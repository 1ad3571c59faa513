"""Logging: structlog, one JSON object per line on stderr (stdout stays free for `bootstrap`'s key).

Two pipelines. Application events (start, stop, warnings, failures) are written at once.
The access log, one line per RPC, is the high-volume one: it has its own minimal chain
and a buffer that `flush` writes out (the server flushes every 100 ms and on shutdown),
so an RPC costs a few microseconds of logging instead of a formatted write() each.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog

ACCESS_BUFFER_LIMIT = 64 * 1024


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
    access_enabled: bool = True


def configure(level: str = "info", stream: BinaryIO | None = None, *, access: bool = True) -> None:
    """Loggers obtained after this call write to `stream` (default: stderr) at `level` and above.

    `access=False` turns the per-RPC access log off (KEYGATE_ACCESS_LOG=off): at saturation its
    line is about a quarter of keygate's own CPU per Check.
    """
    flush()
    out = stream or sys.stderr.buffer
    _Logs.level = logging.getLevelNamesMapping()[level.upper()]
    _Logs.access_enabled = access
    _Logs.access = BufferedLines(out)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_Logs.level),
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(handlers=[_ToStructlog()], level=max(_Logs.level, logging.WARNING), force=True)


class _CurrentAccess:
    """Forwards to the access buffer of the latest `configure`, so loggers made earlier follow it."""

    def msg(self, message: bytes) -> None:
        _Logs.access.msg(message)

    info = msg


class _ToStructlog(logging.Handler):
    """Standard-library records (asyncpg, grpc) as structlog events: one JSON line each, even with a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), logger=record.name,
                                               exc_info=record.exc_info or False)


def access_logger() -> Any | None:
    """The per-RPC logger (level "info", timestamp, JSON, buffered), or None when it is off."""
    if not _Logs.access_enabled:
        return None
    return structlog.wrap_logger(
        _CurrentAccess(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_Logs.level),
        cache_logger_on_first_use=True,
    )


def flush() -> None:
    """Write out buffered access lines."""
    _Logs.access.flush()
