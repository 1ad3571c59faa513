"""Page sizes and opaque, tamper-evident page tokens (AIP-158).

A token is the last row's sort key (the cursor) and an HMAC-SHA256 tag over it and the query
it came from, under a server secret every replica shares. Nothing in a token is read before its
tag checks out, so a forged or altered token, or one replayed against a different query, is
refused without its cursor ever reaching a parser or the database. Cursors are still checked for
type and range afterwards: a tag proves we issued a token, not that every version of us would
read it the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LEN = 512  # ours are under 120 characters
TAG_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is 2**128 guesses, each a round trip
MIN_SECRET_BYTES = 16
MAX_CURSOR_TEXT = 64  # an ISO timestamp or a UUID
_INT64 = range(-(2**63), 2**63)
_CONTEXT = b"keygate page token v1\n"

Cursor = list[str | int]
T = TypeVar("T")
_FOREIGN_TOKEN = "is not a token this service issued for this query; keep the other fields unchanged, or omit it"


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 0 < requested <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
    return requested


def _valid_cursor(cursor: object) -> bool:
    """Strings and 64-bit integers of bounded size: what our cursors are made of, and all asyncpg takes."""
    return isinstance(cursor, list) and all(
        (type(part) is str and len(part) <= MAX_CURSOR_TEXT) or (type(part) is int and part in _INT64)
        for part in cursor
    )


class PageTokens:
    """Issues and reads page tokens under one secret (pure: the caller supplies the secret)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a page token secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def _tag(self, payload: bytes, query: Sequence[object]) -> bytes:
        message = _CONTEXT + repr(list(query)).encode() + b"\n" + payload
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:TAG_BYTES]

    def encode(self, cursor: Cursor, query: Sequence[object]) -> str:
        payload = json.dumps(cursor, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._tag(payload, query) + payload).decode().rstrip("=")

    def decode(self, token: str, query: Sequence[object], parse: Callable[[Cursor], T]) -> T | None:
        """The position in `token`, read by `parse` (None for the first page).

        InvalidArgument for anything we did not issue for this very query, and for cursors `parse` rejects.
        """
        if not token:
            return None
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidArgument("page_token", _FOREIGN_TOKEN)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument("page_token", _FOREIGN_TOKEN) from None
        tag, payload = raw[:TAG_BYTES], raw[TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(payload, query)):
            raise InvalidArgument("page_token", _FOREIGN_TOKEN)
        try:
            cursor = json.loads(payload)
            if not _valid_cursor(cursor):
                raise ValueError("cursor")
            return parse(cursor)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            raise InvalidArgument("page_token", _FOREIGN_TOKEN) from None

    def page(self, rows: list[T], size: int, cursor: Callable[[T], Cursor],
             query: Sequence[object]) -> tuple[list[T], str]:
        """Rows fetched with LIMIT size + 1 -> (this page, the token of the next or ""): the extra row
        only tells that another page exists."""
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        return rows, self.encode(cursor(rows[-1]), query)
