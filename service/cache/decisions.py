"""Remembered decisions: a repeated Check costs one dictionary lookup.

A decision is remembered for exactly the question asked, and answers again only while nothing it
rests on has changed or aged: no entry was (re)loaded or invalidated since (the epoch), the
credential and bindings it was made from are still fresh by age and trusted by the listener, and
neither the key nor its secret has expired since.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from math import inf

from ..domain.decision import Decision
from .entries import Entries, Entry, Slot
from .freshness import Freshness
from .lru import LRU


@dataclass(frozen=True, slots=True)
class Remembered:
    """Made once per decision, read on every hit: slots, which Python 3.11 reads in a specialized
    instruction, where each NamedTuple field is a generic descriptor lookup."""

    decision: Decision
    epoch: int
    fresh_until: float  # monotonic: when the oldest cache entry behind it goes stale
    expires: float  # wall clock (time.time()): when the key (or its rotated secret) expires; inf: never


class Decisions:
    def __init__(self, capacity: int, entries: Entries, freshness: Freshness, hits: dict[str, int],
                 misses: dict[str, int]) -> None:
        self.remembered: LRU[Hashable, Remembered] = LRU(capacity)
        self._peek = self.remembered.peek
        self._entries = entries
        self._freshness = freshness
        self._clock = freshness.clock
        self._hits = hits
        self._misses = misses

    def recall(self, slot: Hashable, now: float) -> Decision | None:
        """A decision made for exactly this question, if nothing it rests on has changed or aged (`now`:
        `time.time()`).

        A hit does not count as a use: the oldest remembered decision goes first when the memo is full
        (first in, first out), as reordering on every hit was a visible share of a cached Check. Little is
        lost: a decision is made again, and so moves to the newest end, at least once per `ttl`."""
        remembered = self._peek(slot)
        if remembered is None or remembered.epoch != self._freshness.epoch:
            self._misses["decisions"] += 1
            return None
        at = self._clock()
        if (at >= remembered.fresh_until or at >= self._freshness.trusted_until
                or now >= remembered.expires):
            self._misses["decisions"] += 1
            return None
        self._hits["decisions"] += 1
        return remembered.decision

    def remember(self, slot: Hashable, decision: Decision, digest: bytes, bindings: Slot | None) -> None:
        """Keep `decision` for as long as the credential (and bindings) it was made from stay fresh."""
        credential = decision.credential
        if credential is None:
            return
        fresh_until = self._fresh_until(self._entries.credentials.peek(digest))
        if bindings is not None:
            fresh_until = min(fresh_until, self._fresh_until(self._entries.bindings.peek(bindings)))
        expiries = [t.timestamp() for t in (credential.expire_time, credential.secret_expire_time) if t is not None]
        self.remembered.put(slot, Remembered(decision, self._freshness.epoch, fresh_until, min(expiries, default=inf)))

    def _fresh_until(self, entry: Entry[object] | None) -> float:
        return self._freshness.fresh_until(None if entry is None else entry.fetched_at)
