"""Digest -> Credential: answered from memory while fresh, else read from the store (single-flight) and
converted from the stored record. Unknown digests are cached too (negative entries), and the flood
guard may refuse an unknown key without a read."""

from __future__ import annotations

from ..domain.decision import Credential
from ..domain.errors import Unavailable
from ..domain.permissions import Catalog
from ..store.interface import KeySource
from .entries import MISS, Entries, Miss
from .flight import Flight
from .flood import Flood
from .freshness import AGING, STALE, Freshness


class Credentials:
    def __init__(self, source: KeySource, catalog: Catalog, entries: Entries, freshness: Freshness,
                 flight: Flight, flood: Flood, hits: dict[str, int], misses: dict[str, int]) -> None:
        self._source = source
        self._catalog = catalog
        self._entries = entries
        self._freshness = freshness
        self._flight = flight
        self._flood = flood
        self._hits = hits
        self._misses = misses
        # The hot path's lookups, bound once.
        self._cached = entries.credentials.get
        self._state = freshness.state
        self._clock = freshness.clock

    def peek(self, digest: bytes) -> Credential | Miss | None:
        """Answer from memory alone: the credential, None for a key known not to exist, or MISS.

        Synchronous, so a cached Check awaits nothing. A fresh entry near its ttl is refreshed in the
        background; while the database is unreachable a stale one answers within the outage grace.
        """
        now = self._clock()
        entry = self._cached(digest)
        if entry is not None:
            state = self._state(entry.fetched_at, now)
            if state == STALE:
                return MISS
            if state == AGING:
                self._flight.start(("k", digest), lambda: self._fetch(digest),
                                   lambda value, at: self._keep(digest, value, at))
            self._hits["keys"] += 1
            return entry.value
        seen = self._entries.negative.get(digest)
        if seen is not None and self._freshness.fresh(seen, now):
            self._hits["negative"] += 1
            return None
        return MISS

    async def get(self, digest: bytes) -> Credential | None:
        """The credential of a digest, or None if no such key exists."""
        found = self.peek(digest)
        if not isinstance(found, Miss):
            return found
        self._misses["keys"] += 1
        if self._flood.refuses(digest):
            return None
        read = self._flight.load(("k", digest), lambda: self._fetch(digest),
                                 lambda value, at: self._keep(digest, value, at))
        try:
            return await self._freshness.or_graced(read, self._cached(digest))
        except Unavailable:
            # A confirmation the database could not give in time (a flood saturating the loop, a slow
            # database) leaves the filter's answer standing, as beyond the budget: not found, not 503.
            if self._flood.unknown(digest):
                return None
            raise

    async def _fetch(self, digest: bytes) -> Credential | None:
        async with self._source.lookup() as tx:
            found = await tx.key_by_digest(digest)
        if found is None:
            return None
        record, secret_expire_time = found
        return record.credential(self._catalog, secret_expire_time)

    def _keep(self, digest: bytes, credential: Credential | None, fetched_at: float) -> None:
        self._freshness.reloaded()
        self._entries.keep_credential(digest, credential, fetched_at)
