"""last_used_time and usage_count, written behind in batches, never on the Check path.

`record` is a dictionary update; a background task flushes the batch every
`interval` seconds, and `stop` flushes what is left, so a graceful shutdown loses nothing
(unless the database is unreachable then: the counts lost are logged).
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import structlog

from .clock import utc
from .domain.errors import Unavailable
from .store.interface import UsageStore

log = structlog.get_logger(__name__)


class UsageRecorder:
    def __init__(self, store: UsageStore, interval: float = 1.0) -> None:
        self._store = store
        self._interval = interval
        # Keyed by the UUID's 128-bit integer: UUID.__hash__ is a Python-level call, twice per Check.
        # [uses, the latest use as time.time()], updated in place: no tuple and no second lookup per Check.
        self._pending: dict[int, list[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: UUID, when: float) -> None:
        """On the Check path: calls arrive in time order, so the latest `when` (`time.time()`: a datetime per
        call was a visible share of a cached Check) is simply the last."""
        entry = self._pending.get(key_id.int)
        if entry is None:
            self._pending[key_id.int] = [1, when]
        else:
            entry[0] += 1
            entry[1] = when

    @property
    def pending(self) -> int:
        """Keys whose usage awaits the next flush: the write-behind queue's depth."""
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self._pending:  # the database is unreachable: nothing will write them now
            log.warning("usage_lost", keys=len(self._pending))

    async def flush(self) -> None:
        """Write the pending batch; on failure put it back to be merged into the next one."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            async with self._store.transaction() as tx:
                await tx.add_usage({UUID(int=number): (int(count), utc(last))
                                    for number, (count, last) in batch.items()})
        except Unavailable:
            for number, (count, last) in batch.items():
                now_count, now_last = self._pending.get(number, (0, last))
                self._pending[number] = [count + now_count, max(last, now_last)]
            log.warning("usage_flush_deferred", keys=len(batch))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
