"""Verified keys, unknown keys and resource bindings, cached per process: the facade over the parts.

- credentials.py: digest -> Credential (store read, record conversion, negative entries);
- bindings.py: (workspace, resource) -> bindings;
- decisions.py: remembered decisions, so a repeated Check costs one dictionary lookup;
- entries.py: the bounded maps and the key index; freshness.py: ttl, refresh-ahead, the listener's
  trust, outage grace, and the counters that keep a read from undoing an invalidation;
- flight.py: one read per slot at a time; flood.py: the filter of known keys and its lookup budget.

Freshness has four guards:
- every committed mutation NOTIFYs; `apply` drops what it names (within milliseconds);
- the listener proves it hears them with a round trip at least every second: entries are
  trusted only until the send time of the last answered ping + the bound (`trust`);
- an entry older than `ttl` is read again (a hit past `refresh_ahead` refreshes in the
  background, so hot keys never wait), which bounds staleness whatever happens;
- when the change listener is lost, everything cached before counts as stale.
While the database is known unreachable (the store's probe has not got through), a stale entry
answers at once for `outage_grace` beyond its ttl; anything not cached fails closed (Unavailable),
also at once. Expiry is never cached: `decide` compares the credential's expire_time with the
clock on every Check.

The hot path's methods (`peek`, `recall`, `peek_bindings`) are the parts' own bound methods, so the
facade adds no call to a cache hit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..domain import changes
from ..domain.permissions import Catalog
from ..metrics import CACHES, LAG_BUCKETS, Histogram
from ..store.interface import KeySource
from .bindings import Bindings
from .credentials import Credentials
from .decisions import Decisions
from .entries import MISS, Entries, Miss
from .feed import Feed
from .flight import Flight
from .flood import Flood
from .freshness import Freshness
from .replay import Replay

__all__ = ["MISS", "CacheSettings", "KeyCache", "Miss"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    max_keys: int = 100_000
    max_negative: int = 100_000
    max_bindings: int = 100_000
    ttl: float = 10.0  # seconds an entry answers without being read again
    outage_grace: float = 60.0  # further seconds an entry may answer while the database is unreachable
    refresh_ahead: float = 0.8  # fraction of ttl after which a hit refreshes in the background
    unknown_key_lookups: float = 20.0  # keys a second the known-keys filter refuses that are still looked up
    max_decisions: int = 100_000  # remembered decisions (key, resource, action, workspace)


class KeyCache:
    def __init__(self, source: KeySource, catalog: Catalog, settings: CacheSettings = CacheSettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self.settings = settings
        # For metrics, read at scrape time: a lookup is counted once, where it is answered.
        self.hits = dict.fromkeys(CACHES, 0)
        self.misses = dict.fromkeys(CACHES, 0)
        self.lag = Histogram(LAG_BUCKETS)  # NOTIFY sent to applied here, seconds
        self._freshness = Freshness(settings.ttl, settings.refresh_ahead, settings.outage_grace,
                                    lambda: source.reachable, clock)
        self._entries = Entries(settings.max_keys, settings.max_negative, settings.max_bindings)
        flight = Flight(self._freshness)
        self._flood = Flood(settings.unknown_key_lookups, clock)
        self.replay = Replay(self._flood, self._freshness)  # what a read replica must reach (store/replicas.py)
        credentials = Credentials(source, catalog, self._entries, self._freshness, flight, self._flood,
                                  self.hits, self.misses)
        bindings = Bindings(source, self._entries, self._freshness, flight, self.hits, self.misses)
        self._decisions = Decisions(settings.max_decisions, self._entries, self._freshness, self.hits, self.misses)
        # Reads: answered from memory (peek*, recall) or awaited (credential, bindings*).
        self.peek = credentials.peek
        self.credential = credentials.get
        self.peek_bindings = bindings.peek
        self.bindings = bindings.get
        self.bindings_many = bindings.get_many
        self.recall = self._decisions.recall
        self.remember = self._decisions.remember
        # The change listener's side.
        self.mark = self.replay.mark
        self.feed = Feed()  # what the listener hears, handed on to WatchChanges streams
        source.on_commit(self.apply)

    # --- sizes, for tests and metrics ------------------------------------------------

    def sizes(self) -> dict[str, int]:
        entries, known = self._entries, self._flood.known
        return {"keys": len(entries.credentials), "negative": len(entries.negative),
                "bindings": len(entries.bindings), "decisions": len(self._decisions.remembered),
                "known": known.count if known else 0}

    def evictions(self) -> dict[str, int]:
        entries = self._entries
        return {"keys": entries.credentials.evictions, "negative": entries.negative.evictions,
                "bindings": entries.bindings.evictions, "decisions": self._decisions.remembered.evictions}

    @property
    def synchronized(self) -> bool:
        return self._flood.known is not None

    # --- invalidation ------------------------------------------------------------------

    def apply_payload(self, payload: str) -> None:
        """A NOTIFY payload from the change listener."""
        try:
            change, sent = changes.decode(payload)
        except (ValueError, TypeError, KeyError):
            log.warning("change_unreadable_cache_cleared")
            self.clear()
            self.feed.resync(self.feed.listening)
            return
        self.apply(change)
        self.feed.publish(change)
        if sent is not None:
            self.lag.observe(max(0.0, time.time() - sent))

    def apply(self, change: changes.Change) -> None:
        self._freshness.invalidate()
        self.replay.heard()
        entries = self._entries
        if isinstance(change, changes.BindingChanged):
            entries.bindings.pop((change.workspace_id, change.resource))
            return
        entries.drop_key(change.key_id)
        if change.new_fingerprints:
            entries.negative.clear()  # one of them may be a key we cached as unknown
            self._flood.heard(change.new_fingerprints)
        if change.bindings_removed:
            entries.bindings.clear()

    def clear(self) -> None:
        self._freshness.invalidate()
        self.replay.heard()
        self._entries.clear()

    def trust(self, until: float, mark: int, position: int) -> None:
        """A ping marked `mark` (see `mark`) answered with the primary's WAL `position`: every change
        committed before `until` minus the listener's bound has been heard, and a replica that has
        replayed `position` has every change heard before the ping."""
        self._freshness.trust(until)
        self.replay.settle(mark, position)

    def desynchronize(self) -> None:
        """The change listener is down: changes may be missed, so nothing cached before now is fresh,
        and what is read from now on is fresh for its ttl alone."""
        self._freshness.restart(math.inf)
        self._flood.forget()
        self.replay.lost()
        self.feed.resync(listening=False)

    def synchronize(self, trusted_until: float) -> None:
        """The listener is (back) up: everything read before now may have missed a change. From now on
        entries are trusted until `trusted_until`, which `trust` moves on. The filter of known keys is
        loaded separately (`rebuild_filter`), while the listener keeps proving it is alive."""
        self._freshness.restart(trusted_until)
        self.feed.resync(listening=True)

    async def rebuild_filter(self) -> None:
        """Load every stored digest into a new filter of known keys, then swap it in. Must run while listening."""
        await self._flood.rebuild(self._source)
        self.replay.heard()  # the new filter vouches only once a ping sent after its scan settles the floor

    @property
    def filter_overfull(self) -> bool:
        return self._flood.overfull
