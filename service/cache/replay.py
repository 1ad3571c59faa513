"""The replay floor: how far a read replica must have replayed for its answer to stand (store/replicas.py).

Every change this process hears of (a NOTIFY, its own commit, a lost listener, a new filter of known keys)
unsettles the floor; the change listener's next ping settles it again with the primary's WAL insert
position, which lies past the commit of everything heard before that ping was sent. Only a ping sent
after the last change counts: `mark` is taken as it is sent. Until then the primary answers (for a
ping interval, 0.2 s, after each change). A position in the NOTIFY itself would not do: read inside the
writing transaction it lies before the commit record.
"""

from __future__ import annotations

from ..domain.keys import fingerprint
from .flood import Flood
from .freshness import Freshness


class Replay:
    def __init__(self, flood: Flood, freshness: Freshness) -> None:
        self._flood = flood
        self._freshness = freshness
        self._heard = 1  # changes (and losses) heard so far; unsettled until a first ping
        self._settled = 0  # the `mark` of the last ping that settled the floor
        self._since = 1  # pings marked before this (the last loss) say nothing about this connection
        self._floor = 0

    def mark(self) -> int:
        """Taken as a ping is sent: the changes it will cover."""
        return self._heard

    def heard(self) -> None:
        """A change: until a ping sent after it answers, no replica answer stands."""
        self._heard += 1

    def lost(self) -> None:
        """The change listener is down: changes may go unheard, and the next primary (a failover) may be at
        an earlier position; settle afresh from the next connection's first ping."""
        self._heard += 1
        self._since = self._heard
        self._floor = 0

    def settle(self, mark: int, position: int) -> None:
        """A ping marked `mark` answered `position`."""
        if mark >= max(self._settled, self._since):
            self._settled = mark
            self._floor = max(self._floor, position)

    def floor(self) -> int | None:
        """The position a replica must have replayed; None while a change is unsettled, or while the
        listener is silent past its deadline (changes since its last answer may be unheard)."""
        if self._settled != self._heard or self._freshness.clock() >= self._freshness.trusted_until:
            return None
        return self._floor

    def vouches(self, digest: bytes) -> bool:
        """A replica at the floor found no such key: that stands if the complete filter of known keys
        holds the digest (a false positive, or a deleted key). Every fingerprint in it was heard or
        scanned before the floor settled, so the replica has it. Otherwise the key may be newer than
        the floor (created a moment ago, its NOTIFY not yet here): the primary confirms."""
        known = self._flood.known
        return known is not None and fingerprint(digest) in known
