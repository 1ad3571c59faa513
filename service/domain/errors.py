"""The errors the rest of keygate raises; the API layer maps each to one gRPC status.

Messages are shown to callers verbatim and may be audited, so they never carry a key, a digest or a
secret: whatever a caller put in a field that a message quotes, a key-shaped run is replaced here.
"""

from __future__ import annotations

import re

# What every key of ours contains, whatever its prefix: a run of at least 43 base62 characters (the
# secret; with the checksum one run of 49, see keys.py); and what an imported Flowise key is: 43
# base64url characters (32 random bytes), so `-` and `_` count too. Errors and logs replace such runs;
# a request id or resource name holding one is refused.
KEY_SHAPED = re.compile(r"[0-9A-Za-z_-]{43,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return KEY_SHAPED.sub(REDACTED, text)


class KeygateError(Exception):
    """Base class. `reason` is a stable UPPER_SNAKE identifier for google.rpc.ErrorInfo."""

    reason = "KEYGATE_ERROR"

    def __init__(self, message: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(KeygateError):
    """A caller's mistake in one field of the request."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str) -> None:
        field, description = redact(field), redact(description)
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class NotFound(KeygateError):
    reason = "NOT_FOUND"

    def __init__(self, what: str, name: str) -> None:
        name = redact(name)
        super().__init__(f"{what} {name!r} not found")
        self.what = what
        self.name = name


class Unauthenticated(KeygateError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(KeygateError):
    reason = "PERMISSION_DENIED"


class Aborted(KeygateError):
    """A concurrent change won (etag mismatch); read again and retry."""

    reason = "ABORTED"


class Unavailable(KeygateError):
    """keygate cannot decide right now (database unreachable); the caller should retry."""

    reason = "UNAVAILABLE"
