"""Replies kept per remembered Decision, sent again as the bytes they were sent as.

A repeated Check (or ext_authz request) gets back the very Decision object the decision cache
remembered, so the reply rendered for it can be kept beside it and sent as those bytes
(`boundary._bytes_or`): building and serializing the reply was a large share of a cached call.
Both deciding servicers keep their replies this way; the Envoy servicer's record says more about
what its reply was built for (`envoy._Template`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from ..domain.decision import Decision

MAX_KEPT = 10_000  # replies kept per servicer: about one per key and question in use


@dataclass(frozen=True, slots=True)
class Rendered:
    """The reply rendered for `decision`, serialized. Slots: its fields are read on every cached call,
    and Python 3.11 specializes a slot read."""

    decision: Decision
    sent: bytes


R = TypeVar("R", bound=Rendered)


class Replies(dict[int, R], Generic[R]):
    """Rendered replies by the identity of their Decision: a Decision's hash would walk its credential.
    Each entry holds its Decision, so that id cannot be reused while the entry lives; a caller finds an
    entry with `get(id(decision))` and trusts it only if `entry.decision is decision`. A changed
    credential is a new Decision; the old entries go when the table is full (cleared at once: a reply
    is rebuilt on the next call, and no order is kept per hit)."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int = MAX_KEPT) -> None:
        super().__init__()
        self._limit = limit

    def keep(self, reply: R) -> R:
        if len(self) >= self._limit:
            self.clear()
        self[id(reply.decision)] = reply
        return reply
