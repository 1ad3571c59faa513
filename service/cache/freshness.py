"""Whether a cached entry may answer: its age against the ttl, the change listener's trust, and outages.

An entry answers while it is fresh: read after the last restart of trust (`valid_after`), younger
than `ttl`, and asked before `trusted_until` (the listener's deadline: the send time of its last
answered ping plus its bound). A fresh entry past `refresh_ahead` of its ttl is AGING: it answers,
and the caller reloads it in the background so hot keys never wait. While the database is known
unreachable, a stale entry still answers for `outage_grace` beyond its ttl (GRACED).

Two counters, because they guard different things. `generation` moves only on invalidations and
restarts: a read that overlaps one is not kept (it may predate the change). `epoch` also moves when
any entry is (re)loaded: a remembered decision rests on entries that may have been replaced. One
counter would make every concurrent cold load discard its result whenever another key's load
finished first.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from ..domain.errors import Unavailable
from .entries import Entry

V = TypeVar("V")

FRESH: Final = 0
AGING: Final = 1  # fresh, and due for a background refresh
GRACED: Final = 2  # stale, answering because the database is unreachable
STALE: Final = 3


class Freshness:
    def __init__(self, ttl: float, refresh_ahead: float, outage_grace: float, reachable: Callable[[], bool],
                 clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._refresh_after = ttl * refresh_ahead
        self._graced_for = ttl + outage_grace
        self._reachable = reachable
        self.clock = clock
        self.valid_after = -math.inf  # entries read before this are stale
        self.trusted_until = math.inf  # nothing cached is fresh from then on (the listener's deadline)
        self.generation = 0
        self.epoch = 0

    def state(self, fetched_at: float, now: float) -> int:
        """FRESH, AGING, GRACED or STALE: one call on a cache hit."""
        age = now - fetched_at
        if fetched_at >= self.valid_after and age < self.ttl and now < self.trusted_until:
            return AGING if age > self._refresh_after else FRESH
        return GRACED if age < self._graced_for and not self._reachable() else STALE

    def fresh(self, fetched_at: float, now: float) -> bool:
        return fetched_at >= self.valid_after and now - fetched_at < self.ttl and now < self.trusted_until

    def fresh_until(self, fetched_at: float | None) -> float:
        """When an entry read at `fetched_at` stops being fresh by age (-inf: already stale, or absent)."""
        if fetched_at is None or fetched_at < self.valid_after:
            return -math.inf
        return fetched_at + self.ttl

    async def or_graced(self, read: Awaitable[V], stale: Entry[V] | None) -> V:
        """The result of `read`; if the database is unreachable, a stale entry within the outage grace
        answers instead, and anything else fails closed (Unavailable)."""
        try:
            return await read
        except Unavailable:
            if stale is not None and self.clock() - stale.fetched_at < self._graced_for:
                return stale.value
            raise

    def reloaded(self) -> None:
        """An entry was (re)loaded: decisions remembered before rest on what it replaced."""
        self.epoch += 1

    def invalidate(self) -> None:
        """Something cached changed: reads under way may predate it, decisions may rest on it."""
        self.generation += 1
        self.epoch += 1

    def restart(self, trusted_until: float) -> None:
        """Nothing read before now is fresh; from now on entries are trusted until `trusted_until`."""
        self.invalidate()
        self.valid_after = self.clock()
        self.trusted_until = trusted_until

    def trust(self, until: float) -> None:
        """The change listener has heard every change committed before `until` minus its bound."""
        self.trusted_until = until
