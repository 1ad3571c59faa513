"""Keeps one process's KeyCache in step with every other replica's mutations.

A dedicated connection LISTENs for changes. When it is lost (network, restart,
pg_terminate_backend) the cache is desynchronized at once (nothing cached is fresh), the
store is asked to confirm the database is still there (so an idle replica's health learns of an
outage within the bound too), and the listener reconnects with backoff; once listening again, the
cache resynchronizes.

A connection can also fall silent without closing (its backend or the network stalls), so the
listener pings it every `interval` seconds. An answered ping proves that every NOTIFY committed
before it was sent has been delivered: the committing backend signals the listening one before it
reports the commit, PostgreSQL sends a backend's pending notifications before it reports ready for
the next query, and asyncpg schedules them before it wakes the ping's caller. So the cache may trust
its entries until that send time + `bound`. The cache's hot path compares against that deadline
itself, so a silent listener costs at most `bound` even if this task runs late.

A ping not answered within `bound` of its sending ends the connection. One answered in time but
handled late (this process did not run: a saturated event loop, a paused VM) only lets the trust
lapse until the next ping's answer: the connection is sound, and reconnecting would drop and reload
the filter of known keys in the middle of the very load that delayed the ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from ..store.interface import ChangeFeed, Listening
from .keys import KeyCache

log = structlog.get_logger(__name__)

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
BOUND = 1.0  # seconds a change may take to reach the cache while listening
PING_INTERVAL = 0.2  # seconds between the end of one ping and the next: trust stays continuous
# as long as two consecutive round trips take under BOUND - PING_INTERVAL together
FILTER_CHECK_INTERVAL = 1.0  # seconds between checks whether the filter of known keys needs a larger rebuild


class ChangeListener:
    def __init__(self, store: ChangeFeed, cache: KeyCache, *, bound: float = BOUND, interval: float = PING_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._cache = cache
        self._bound = bound
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # listening, and the filter of known keys loaded

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="change-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                await self._listen_until_lost()
                delay = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means "not listening": retry, never crash the server
                log.warning("change_listener_down", error=type(exc).__name__, retry_in=delay)
            finally:
                self.connected.clear()
                self._cache.desynchronize()
            self._store.suspect()  # the database may have gone with the connection
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()
        asked = self._clock()  # the LISTEN, sent after this, is the first ping
        listening = await self._store.listen(self._cache.apply_payload, lost.set)
        try:
            self._cache.synchronize(asked + self._bound)
            tasks = [asyncio.create_task(self._ping_until_lost(listening, lost)),
                     asyncio.create_task(self._keep_filter())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            log.warning("change_listener_lost")
        finally:
            with contextlib.suppress(Exception):
                listening.close()

    async def _ping_until_lost(self, listening: Listening, lost: asyncio.Event) -> None:
        """Returns when the connection closes; TimeoutError when a ping is not answered within the bound."""
        this = asyncio.current_task()
        while not lost.is_set():
            # Python 3.11's wait_for returns a result that completed as a cancel arrived and drops the
            # cancel: without this check a stopping listener could ping on forever and hang the shutdown.
            if this is not None and this.cancelling():
                raise asyncio.CancelledError
            sent, mark = self._clock(), self._cache.mark()
            position = await asyncio.wait_for(listening.ping(), self._bound)
            self._cache.trust(sent + self._bound, mark, position)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._interval)

    async def _keep_filter(self) -> None:
        """Load the filter of known keys, then rebuild it larger whenever it fills up."""
        await self._cache.rebuild_filter()
        self.connected.set()
        log.info("change_listener_up")
        while True:
            await asyncio.sleep(FILTER_CHECK_INTERVAL)
            if self._cache.filter_overfull:
                await self._cache.rebuild_filter()
