"""The errors the rest of keygate raises; the API layer maps each to one gRPC status.

Messages are shown to callers verbatim, so they never carry a key, a digest or a secret.
"""

from __future__ import annotations


class KeygateError(Exception):
    """Base class. `reason` is a stable UPPER_SNAKE identifier for google.rpc.ErrorInfo."""

    reason = "KEYGATE_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KeygateError):
    """A caller's mistake in one field of the request."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class NotFound(KeygateError):
    reason = "NOT_FOUND"

    def __init__(self, what: str, name: str) -> None:
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
