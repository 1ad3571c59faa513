"""The one source of "now", so tests and decisions agree on time zones (always UTC)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc(seconds: float) -> datetime:
    """The UTC datetime of a `time.time()` reading: the hot path keeps time as a float, the rules as this."""
    return datetime.fromtimestamp(seconds, UTC)
