"""The key a caller presents: `authorization: Bearer <key>`, the one credential both middlewares read."""

from __future__ import annotations


def bearer_key(authorization: str) -> str:
    """The key of an `authorization` value, or "" when it is not the Bearer scheme (RFC 6750: case-blind)."""
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""
