"""Verified keys, unknown keys and resource bindings, cached per process.

An uncached key is looked up in the database (one query per key, however many callers
ask at once). When the filter of known keys says a key does not exist, the database still
confirms it, within a budget of `unknown_key_lookups` a second; beyond it (a flood of made-up
keys) the filter's "not found" answers alone. The filter can lag a key created on another
replica a moment ago by the time its NOTIFY takes, so it is a load shedder, not the first answer.

Reads are answered from memory while fresh. Freshness has four guards:
- every committed mutation NOTIFYs; `apply` drops what it names (within milliseconds);
- the listener proves it hears them with a round trip at least every second: entries are
  trusted only until `_trusted_until` (send time of the last answered ping + the bound);
- an entry older than `ttl` is read again (a hit past `refresh_ahead` refreshes in the
  background, so hot keys never wait), which bounds staleness whatever happens;
- when the change listener is lost, everything cached before counts as stale.
While the database is known unreachable (the store's probe has not got through), a stale entry
answers at once for `outage_grace` beyond its ttl; anything not cached fails closed (Unavailable),
also at once. Expiry is never cached: `decide` compares the credential's expire_time with the
clock on every Check.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar
from uuid import UUID

import structlog

from ..domain import changes
from ..domain.decision import Binding, Credential, Decision
from ..domain.errors import Unavailable
from ..domain.keys import fingerprint
from ..domain.permissions import Catalog
from ..metrics import CACHES, LAG_BUCKETS, Histogram
from ..store.postgres import Store
from .budget import Budget
from .known import KnownDigests
from .lru import LRU

log = structlog.get_logger(__name__)

V = TypeVar("V")


class Miss:
    """The answer is not in memory: ask `credential` / `bindings`, which may read the database."""


MISS = Miss()


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


class _Remembered(NamedTuple):
    decision: Decision
    epoch: int
    fresh_until: float  # monotonic: when the oldest cache entry behind it goes stale
    expires: datetime | None  # wall clock: when the key (or its rotated secret) expires


class _Entry(NamedTuple, Generic[V]):
    value: V
    fetched_at: float  # when the read that produced it began (monotonic)


class KeyCache:
    def __init__(self, store: Store, catalog: Catalog, settings: CacheSettings = CacheSettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._catalog = catalog
        self.settings = settings
        self._clock = clock
        self._credentials: LRU[bytes, _Entry[Credential]] = LRU(settings.max_keys, self._forget)
        self._by_key: dict[UUID, set[bytes]] = {}
        self._negative: LRU[bytes, float] = LRU(settings.max_negative)
        self._bindings: LRU[tuple[str, str], _Entry[tuple[Binding, ...]]] = LRU(settings.max_bindings)
        self._known: KnownDigests | None = None  # consulted only while complete
        self._building: list[bytes] | None = None  # fingerprints heard while a filter loads
        self._valid_after = -math.inf  # entries read before this are stale
        self._trusted_until = math.inf  # nothing cached is fresh from then on (the listener's deadline)
        # Two counters, because they guard different things. `_generation` moves only on invalidations:
        # a read that overlaps one is not cached. `_epoch` also moves when any entry is (re)loaded:
        # a remembered decision rests on entries that may have been replaced. One counter would make
        # every concurrent cold load discard its result whenever another key's load finished first.
        self._generation = 0
        self._inflight: dict[Hashable, asyncio.Future[object]] = {}
        rate = settings.unknown_key_lookups
        self._confirmations = Budget(rate, max(rate, 1.0), clock())
        self._decisions: LRU[Hashable, _Remembered] = LRU(settings.max_decisions)
        self._epoch = 0
        # For metrics, read at scrape time: a lookup is counted once, where it is answered.
        self.hits = dict.fromkeys(CACHES, 0)
        self.misses = dict.fromkeys(CACHES, 0)
        self.lag = Histogram(LAG_BUCKETS)  # NOTIFY sent to applied here, seconds
        store.on_commit(self.apply)

    # --- sizes, for tests and metrics ------------------------------------------------

    def sizes(self) -> dict[str, int]:
        return {"keys": len(self._credentials), "negative": len(self._negative), "bindings": len(self._bindings),
                "decisions": len(self._decisions), "known": self._known.count if self._known else 0}

    def evictions(self) -> dict[str, int]:
        return {"keys": self._credentials.evictions, "negative": self._negative.evictions,
                "bindings": self._bindings.evictions, "decisions": self._decisions.evictions}

    @property
    def synchronized(self) -> bool:
        return self._known is not None

    # --- reads -------------------------------------------------------------------------

    def peek(self, digest: bytes) -> Credential | Miss | None:
        """Answer from memory alone: the credential, None for a key known not to exist, or MISS.

        Synchronous, so a cached Check awaits nothing.
        """
        now = self._clock()
        entry = self._credentials.get(digest)
        if entry is not None:
            found = self._hit(("k", digest), entry, now, lambda: self._fetch_credential(digest),
                              lambda value, at: self._keep_credential(digest, value, at))
            if found is not MISS:
                self.hits["keys"] += 1
            return found
        seen = self._negative.get(digest)
        if seen is not None and self._fresh(seen, now):
            self.hits["negative"] += 1
            return None
        return MISS

    async def credential(self, digest: bytes) -> Credential | None:
        """The credential of a digest, or None if no such key exists."""
        found = self.peek(digest)
        if found is not MISS:
            return found  # type: ignore[return-value]
        self.misses["keys"] += 1
        if self._flood_refuses(digest):
            return None
        return await self._read(("k", digest), self._credentials.get(digest),
                                lambda: self._fetch_credential(digest),
                                lambda value, at: self._keep_credential(digest, value, at))

    def _flood_refuses(self, digest: bytes) -> bool:
        """The complete filter of known keys says no such key, and this second's lookups of such keys
        are spent: a flood is under way, so the filter answers alone. Taken synchronously, so a burst
        arriving in one loop iteration is counted as it arrives."""
        now = self._clock()
        return (self._known is not None and now < self._trusted_until and fingerprint(digest) not in self._known
                and not self._confirmations.take(now))

    def peek_bindings(self, workspace_id: str, resource: str) -> tuple[Binding, ...] | Miss:
        found = self._peek_bindings((workspace_id, resource))
        if found is not MISS:
            self.hits["bindings"] += 1
        return found

    def _peek_bindings(self, slot: tuple[str, str]) -> tuple[Binding, ...] | Miss:
        entry = self._bindings.get(slot)
        if entry is None:
            return MISS
        return self._hit(("b", *slot), entry, self._clock(), lambda: self._fetch_bindings(*slot),
                         lambda value, at: self._keep_bindings(slot, value, at))

    async def bindings(self, workspace_id: str, resource: str) -> tuple[Binding, ...]:
        found = self.peek_bindings(workspace_id, resource)
        if found is not MISS:
            return found  # type: ignore[return-value]
        self.misses["bindings"] += 1
        return await self._read_bindings((workspace_id, resource))

    async def _read_bindings(self, slot: tuple[str, str]) -> tuple[Binding, ...]:
        return await self._read(("b", *slot), self._bindings.get(slot), lambda: self._fetch_bindings(*slot),
                                lambda value, at: self._keep_bindings(slot, value, at))

    async def bindings_many(self, slots: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[Binding, ...]]:
        """The bindings of several (workspace, resource) slots; those not in memory are read in one
        round trip. Each is then answered as by `bindings`, so freshness and outages work as for one."""
        found: dict[tuple[str, str], tuple[Binding, ...] | Miss] = {
            slot: self.peek_bindings(*slot) for slot in dict.fromkeys(slots)}
        missing = [slot for slot, value in found.items() if value is MISS]
        self.misses["bindings"] += len(missing)
        if len(missing) > 1:
            with contextlib.suppress(Unavailable):  # each slot below reads (or fails) on its own
                await self._fetch_and_keep(lambda: self._fetch_bindings_many(missing), self._keep_bindings_many)
        for slot in missing:
            kept = self._peek_bindings(slot)
            found[slot] = await self._read_bindings(slot) if kept is MISS else kept
        return found  # type: ignore[return-value]

    # --- remembered decisions: a repeated Check costs one dictionary lookup ----------------

    def recall(self, slot: Hashable, now: datetime) -> Decision | None:
        """A decision made for exactly this question, if nothing it rests on has changed or aged."""
        remembered = self._decisions.get(slot)
        if remembered is None or remembered.epoch != self._epoch:
            self.misses["decisions"] += 1
            return None
        at = self._clock()
        if (at >= remembered.fresh_until or at >= self._trusted_until
                or (remembered.expires is not None and now >= remembered.expires)):
            self.misses["decisions"] += 1
            return None
        self.hits["decisions"] += 1
        return remembered.decision

    def remember(self, slot: Hashable, decision: Decision, digest: bytes, bindings: tuple[str, str] | None) -> None:
        """Keep `decision` for as long as the credential (and bindings) it was made from stay fresh."""
        credential = decision.credential
        if credential is None:
            return
        fresh_until = self._fresh_until(self._credentials.peek(digest))
        if bindings is not None:
            fresh_until = min(fresh_until, self._fresh_until(self._bindings.peek(bindings)))
        expiries = [t for t in (credential.expire_time, credential.secret_expire_time) if t is not None]
        self._decisions.put(slot, _Remembered(decision, self._epoch, fresh_until, min(expiries, default=None)))

    def _fresh_until(self, entry: _Entry[object] | None) -> float:
        if entry is None or entry.fetched_at < self._valid_after:
            return -math.inf
        return entry.fetched_at + self.settings.ttl

    def _fresh(self, fetched_at: float, now: float) -> bool:
        return fetched_at >= self._valid_after and now - fetched_at < self.settings.ttl and now < self._trusted_until

    def _graced(self, entry: _Entry[V], now: float) -> bool:
        """Whether a stale entry may still answer while the database is unreachable."""
        return now - entry.fetched_at < self.settings.ttl + self.settings.outage_grace

    def _hit(self, slot: Hashable, entry: _Entry[V], now: float, fetch: Callable[[], Awaitable[V]],
             keep: Callable[[V, float], None]) -> V | Miss:
        """A fresh entry's value (refreshing it in the background when it nears its ttl), else MISS.

        While the database is known unreachable, a stale entry within the outage grace answers at once.
        """
        if not self._fresh(entry.fetched_at, now):
            return entry.value if not self._store.reachable and self._graced(entry, now) else MISS
        if now - entry.fetched_at > self.settings.ttl * self.settings.refresh_ahead:
            self._start_load(slot, fetch, keep)
        return entry.value

    async def _read(self, slot: Hashable, stale: _Entry[V] | None, fetch: Callable[[], Awaitable[V]],
                    keep: Callable[[V, float], None]) -> V:
        """Read from the database; if it is unreachable, a stale entry answers for `outage_grace` more."""
        try:
            return await self._load(slot, fetch, keep)
        except Unavailable:
            if stale is not None and self._graced(stale, self._clock()):
                return stale.value
            raise

    async def _load(self, slot: Hashable, fetch: Callable[[], Awaitable[V]], keep: Callable[[V, float], None]) -> V:
        return await asyncio.shield(self._start_load(slot, fetch, keep))  # type: ignore[return-value]

    def _start_load(self, slot: Hashable, fetch: Callable[[], Awaitable[V]],
                    keep: Callable[[V, float], None]) -> asyncio.Future[object]:
        """One read per slot at a time, shared by every caller that needs it.

        It runs as its own task, so a caller that gives up (deadline, cancel) does not cancel
        the read for the others; its result is cached unless a change overlapped it.
        """
        task = self._inflight.get(slot)
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_keep(fetch, keep))
            self._inflight[slot] = task
            task.add_done_callback(lambda done: self._finish(slot, done))
        return task

    def _finish(self, slot: Hashable, task: asyncio.Future[object]) -> None:
        del self._inflight[slot]
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh may have no other reader

    async def _fetch_and_keep(self, fetch: Callable[[], Awaitable[V]], keep: Callable[[V, float], None]) -> V:
        generation, started = self._generation, self._clock()
        value = await fetch()
        if generation == self._generation:
            keep(value, started)
        return value

    async def _fetch_credential(self, digest: bytes) -> Credential | None:
        async with self._store.lookup() as tx:
            found = await tx.key_by_digest(digest)
        if found is None:
            return None
        record, secret_expire_time = found
        return record.credential(self._catalog, secret_expire_time)

    async def _fetch_bindings(self, workspace_id: str, resource: str) -> tuple[Binding, ...]:
        slot = (workspace_id, resource)
        async with self._store.lookup() as tx:
            return (await tx.bindings_for_many([slot]))[slot]

    async def _fetch_bindings_many(
        self, slots: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Binding, ...]]:
        async with self._store.lookup() as tx:
            return await tx.bindings_for_many(slots)

    def _keep_bindings_many(self, found: dict[tuple[str, str], tuple[Binding, ...]], fetched_at: float) -> None:
        for slot, bindings in found.items():
            self._keep_bindings(slot, bindings, fetched_at)

    def _keep_credential(self, digest: bytes, credential: Credential | None, fetched_at: float) -> None:
        self._epoch += 1
        if credential is None:
            self._drop_digest(digest)
            self._negative.put(digest, fetched_at)
            return
        self._negative.pop(digest)
        self._credentials.put(digest, _Entry(credential, fetched_at))
        self._by_key.setdefault(credential.key_id, set()).add(digest)

    def _keep_bindings(self, slot: tuple[str, str], bindings: tuple[Binding, ...], fetched_at: float) -> None:
        self._epoch += 1
        self._bindings.put(slot, _Entry(bindings, fetched_at))

    def _forget(self, digest: bytes, entry: _Entry[Credential]) -> None:
        """Evicted from the LRU: keep the key index in step."""
        digests = self._by_key.get(entry.value.key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_key[entry.value.key_id]

    def _drop_digest(self, digest: bytes) -> None:
        entry = self._credentials.pop(digest)
        if entry is not None:
            self._forget(digest, entry)

    # --- invalidation ------------------------------------------------------------------

    def apply_payload(self, payload: str) -> None:
        """A NOTIFY payload from the change listener."""
        try:
            change, sent = changes.decode(payload)
        except (ValueError, TypeError, KeyError):
            log.warning("change_unreadable_cache_cleared")
            self.clear()
            return
        self.apply(change)
        if sent is not None:
            self.lag.observe(max(0.0, time.time() - sent))

    def apply(self, change: changes.Change) -> None:
        self._generation += 1
        self._epoch += 1
        if isinstance(change, changes.BindingChanged):
            self._bindings.pop((change.workspace_id, change.resource))
            return
        for digest in self._by_key.pop(change.key_id, set()):
            self._credentials.pop(digest)
        if change.new_fingerprints:
            self._negative.clear()  # one of them may be a key we cached as unknown
            for f in change.new_fingerprints:
                if self._known is not None:
                    self._known.add(f)
                if self._building is not None:
                    self._building.append(f)
        if change.bindings_removed:
            self._bindings.clear()

    def clear(self) -> None:
        self._generation += 1
        self._epoch += 1
        self._credentials.clear()
        self._by_key.clear()
        self._negative.clear()
        self._bindings.clear()

    def desynchronize(self) -> None:
        """The change listener is down: changes may be missed, so nothing cached before now is fresh,
        and what is read from now on is fresh for its ttl alone."""
        self._restart(math.inf)
        self._known = None

    def synchronize(self, trusted_until: float) -> None:
        """The listener is (back) up: everything read before now may have missed a change. From now on
        entries are trusted until `trusted_until`, which `trust` moves on. The filter of known keys is
        loaded separately (`rebuild_filter`), while the listener keeps proving it is alive."""
        self._restart(trusted_until)

    def trust(self, until: float) -> None:
        """The listener has heard every change committed before `until` minus its bound."""
        self._trusted_until = until

    def _restart(self, trusted_until: float) -> None:
        self._generation += 1
        self._epoch += 1
        self._valid_after = self._clock()
        self._trusted_until = trusted_until

    async def rebuild_filter(self) -> None:
        """Load every stored digest into a new filter, then swap it in. Must run while listening."""
        self._building = []
        try:
            async with self._store.read() as tx:
                count = await tx.count_digests()
                known = KnownDigests(2 * count)
                async for batch in tx.digests():
                    for digest in batch:
                        known.add(fingerprint(digest))
                    await asyncio.sleep(0)  # a million keys must not stall Checks
            for f in self._building:
                known.add(f)
            self._known = known
        finally:
            self._building = None
        log.info("known_keys_loaded", keys=known.count)

    @property
    def filter_overfull(self) -> bool:
        return self._known is not None and self._known.overfull
