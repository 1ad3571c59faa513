"""Page sizes and opaque page tokens (AIP-158).

A token carries the last row's sort key and a fingerprint of the query it came from,
so a token replayed against a different query is refused rather than misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LEN = 512  # ours are under 200 characters

Cursor = list[str | int]
T = TypeVar("T")
_FOREIGN_TOKEN = "is not a token this service issued; omit it to start over"


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 0 < requested <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
    return requested


def _fingerprint(query: Sequence[object]) -> str:
    return hashlib.sha256(repr(list(query)).encode()).hexdigest()[:16]


def encode(cursor: Cursor, query: Sequence[object]) -> str:
    raw = json.dumps({"c": cursor, "q": _fingerprint(query)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, query: Sequence[object], parse: Callable[[Cursor], T]) -> T | None:
    """The position in `token`, read by `parse` (None for the first page).

    InvalidArgument for anything we did not issue, including cursors `parse` rejects.
    """
    if not token:
        return None
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidArgument("page_token", _FOREIGN_TOKEN)
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, fingerprint = data["c"], data["q"]
        if not isinstance(cursor, list):
            raise ValueError("cursor")
        position = parse(cursor)
    except (binascii.Error, ValueError, TypeError, KeyError, IndexError, RecursionError):
        raise InvalidArgument("page_token", _FOREIGN_TOKEN) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument("page_token", "was issued for a different query; keep the other fields unchanged")
    return position


def page(rows: list[T], size: int, cursor: Callable[[T], Cursor], query: Sequence[object]) -> tuple[list[T], str]:
    """Rows fetched with LIMIT size + 1 -> (this page, the token of the next or ""): the extra row
    only tells that another page exists."""
    if len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    return rows, encode(cursor(rows[-1]), query)
