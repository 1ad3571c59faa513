"""Check-path lookups from a read replica, honest under replication lag: a wrapper around the same
`KeySource` interface (SpiceDB's read-replica shape). Everything else stays on the primary: writes, the
change listener, the known-keys filter's scan, admin reads that must see their own writes, leases.

A replica's answer stands only if the replica has replayed the guard's floor (cache/replay.py keeps it):
the primary's WAL position answered by a change-listener ping sent after every change this process has
heard of (NOTIFYs, its own commits, a reconnect). So an answer that stands has every change the cache
has dropped entries for: a re-read cannot undo an invalidation. A position carried in the NOTIFY itself
would not do: read inside the writing transaction it lies before the commit record.
- No floor (a change not yet settled by a ping, or the listener down): the primary answers.
- Behind the floor: the primary answers.
- A key not found where the guard does not vouch for its absence (the known-keys filter does not hold it:
  it may have been created a moment ago, its NOTIFY not yet here): the primary confirms. Such lookups
  passed the flood guard's budget first (cache/flood.py), so a flood of made-up keys stays on the replica.
- The replica unreachable, slow or failing a query (a conflict with recovery): the primary answers, within
  the same lookup bound. The replica gets
  at most half of it; once it fails it is skipped at once until its background probe gets through.
The replica's position is read before the lookup's query (a separate statement): the query's snapshot is
then at least that new, never older than the position that vouched for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from ..domain import changes
from ..domain.decision import Binding
from ..domain.errors import Unavailable
from ..domain.records import KeyRecord
from . import interface
from .postgres import Reader, Store

T = TypeVar("T")

REPLICA_SHARE = 0.5  # of the lookup bound, at most, before the primary is asked instead
FALLBACKS = ("unsettled", "behind", "absent", "unreachable", "error")  # why the primary answered: metric labels


class Replicated:
    """A `KeySource`: the primary's, with lookups tried on the replica first (see the module docstring).
    Until `follow` gives it the cache's guard, every lookup goes to the primary."""

    def __init__(self, primary: Store, replica: Store) -> None:
        self.primary = primary
        self.replica = replica
        self._guard: interface.ReplayGuard | None = None
        # For metrics, read at scrape time.
        self.replica_reads = 0  # lookups the replica answered
        self.fallbacks = dict.fromkeys(FALLBACKS, 0)  # lookups the primary answered instead, by reason

    def follow(self, guard: interface.ReplayGuard) -> None:
        self._guard = guard

    @property
    def reachable(self) -> bool:
        """The primary's verdict: a replica down is not an outage (the primary answers)."""
        return self.primary.reachable

    def on_commit(self, callback: Callable[[changes.Change], None]) -> None:
        self.primary.on_commit(callback)

    def read(self) -> AbstractAsyncContextManager[Reader]:
        return self.primary.read()

    @asynccontextmanager
    async def lookup(self) -> AsyncIterator[interface.KeyLookups]:
        yield _ReplicaFirst(self, asyncio.get_running_loop().time() + self.primary.settings.lookup_timeout)

    async def close(self) -> None:
        await self.replica.close()


class _ReplicaFirst:
    """One lookup's reads: each on the replica when its answer stands, else on the primary, all before
    the lookup's deadline."""

    def __init__(self, source: Replicated, deadline: float) -> None:
        self._source = source
        self._deadline = deadline

    async def key_by_digest(self, digest: bytes) -> tuple[KeyRecord, datetime | None] | None:
        guard = self._source._guard
        return await self._read(lambda reader: reader.key_by_digest(digest),
                                lambda found: found is None and not (guard is not None and guard.vouches(digest)))

    async def bindings_for_many(self, slots: Sequence[interface.Slot]) -> dict[interface.Slot, tuple[Binding, ...]]:
        return await self._read(lambda reader: reader.bindings_for_many(slots), lambda _found: False)

    async def _read(self, query: Callable[[Reader], Awaitable[T]], doubted: Callable[[T], bool]) -> T:
        """`query` on the replica if its answer stands (`doubted`: the primary must confirm it), else on
        the primary with what is left of the deadline."""
        source = self._source
        loop = asyncio.get_running_loop()
        floor = None if source._guard is None else source._guard.floor()
        if floor is None:
            reason = "unsettled"
        elif not source.replica.reachable:
            reason = "unreachable"
        else:
            try:
                share = min(source.primary.settings.lookup_timeout * REPLICA_SHARE, self._deadline - loop.time())
                async with source.replica.lookup(max(0.0, share)) as reader:
                    if await reader.replayed() < floor:
                        reason = "behind"
                    else:
                        found = await query(reader)
                        if not doubted(found):
                            source.replica_reads += 1
                            return found
                        reason = "absent"
            except Unavailable:
                reason = "unreachable"
            except asyncpg.PostgresError:  # e.g. a query cancelled by a conflict with recovery
                reason = "error"
        source.fallbacks[reason] += 1
        async with source.primary.lookup(max(0.0, self._deadline - loop.time())) as reader:
            return await query(reader)


if TYPE_CHECKING:  # `make lint` (mypy) checks the interfaces it is used through

    def _implements(source: Replicated, lookups: _ReplicaFirst) -> None:
        uses: tuple[interface.KeySource, interface.KeyLookups] = (source, lookups)
        del uses
