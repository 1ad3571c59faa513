"""(workspace, resource) -> the bindings that restrict it: answered from memory while fresh, else read
from the store (single-flight per slot; several missing slots of one BatchCheck in one round trip)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from ..domain.decision import Binding
from ..domain.errors import Unavailable
from ..store.interface import KeySource
from .entries import MISS, Entries, Miss, Slot
from .flight import Flight
from .freshness import AGING, STALE, Freshness


class Bindings:
    def __init__(self, source: KeySource, entries: Entries, freshness: Freshness, flight: Flight,
                 hits: dict[str, int], misses: dict[str, int]) -> None:
        self._source = source
        self._entries = entries
        self._freshness = freshness
        self._flight = flight
        self._hits = hits
        self._misses = misses

    def peek(self, workspace_id: str, resource: str) -> tuple[Binding, ...] | Miss:
        """From memory alone, as `Credentials.peek`; MISS when a read is needed."""
        found = self._peek((workspace_id, resource))
        if found is not MISS:
            self._hits["bindings"] += 1
        return found

    def _peek(self, slot: Slot) -> tuple[Binding, ...] | Miss:
        entry = self._entries.bindings.get(slot)
        if entry is None:
            return MISS
        state = self._freshness.state(entry.fetched_at, self._freshness.clock())
        if state == STALE:
            return MISS
        if state == AGING:
            self._flight.start(("b", *slot), lambda: self._fetch_one(slot),
                               lambda bindings, at: self._keep({slot: bindings}, at))
        return entry.value

    async def get(self, workspace_id: str, resource: str) -> tuple[Binding, ...]:
        found = self.peek(workspace_id, resource)
        if not isinstance(found, Miss):
            return found
        self._misses["bindings"] += 1
        return await self._read((workspace_id, resource))

    async def get_many(self, slots: Sequence[Slot]) -> dict[Slot, tuple[Binding, ...]]:
        """The bindings of several slots; those not in memory are read in one round trip. Each is then
        answered as by `get`, so freshness and outages work as for one."""
        found: dict[Slot, tuple[Binding, ...] | Miss] = {slot: self.peek(*slot) for slot in dict.fromkeys(slots)}
        missing = [slot for slot, value in found.items() if value is MISS]
        self._misses["bindings"] += len(missing)
        if len(missing) > 1:
            with contextlib.suppress(Unavailable):  # each slot below reads (or fails) on its own
                await self._flight.fetch_and_keep(lambda: self._fetch(missing), self._keep)
        answered: dict[Slot, tuple[Binding, ...]] = {}
        for slot, value in found.items():
            if isinstance(value, Miss):
                kept = self._peek(slot)
                value = await self._read(slot) if isinstance(kept, Miss) else kept
            answered[slot] = value
        return answered

    async def _read(self, slot: Slot) -> tuple[Binding, ...]:
        read = self._flight.load(("b", *slot), lambda: self._fetch_one(slot),
                                 lambda bindings, at: self._keep({slot: bindings}, at))
        return await self._freshness.or_graced(read, self._entries.bindings.get(slot))

    async def _fetch(self, slots: Sequence[Slot]) -> dict[Slot, tuple[Binding, ...]]:
        async with self._source.lookup() as tx:
            return await tx.bindings_for_many(slots)

    async def _fetch_one(self, slot: Slot) -> tuple[Binding, ...]:
        return (await self._fetch([slot]))[slot]

    def _keep(self, found: dict[Slot, tuple[Binding, ...]], fetched_at: float) -> None:
        self._freshness.reloaded()
        for slot, bindings in found.items():
            self._entries.keep_bindings(slot, bindings, fetched_at)
