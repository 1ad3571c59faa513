"""Keeps one process's KeyCache in step with every other replica's mutations.

A dedicated connection LISTENs for changes. When it is lost (network, restart,
pg_terminate_backend) the cache is desynchronized at once (nothing cached is fresh),
and the listener reconnects with backoff; once listening again, the cache resynchronizes.
A keepalive query finds a silently dead connection within `keepalive` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ..store.postgres import Store
from .keys import KeyCache

log = structlog.get_logger(__name__)

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class ChangeListener:
    def __init__(self, store: Store, cache: KeyCache, keepalive: float = 1.0) -> None:
        self._store = store
        self._cache = cache
        self._keepalive = keepalive
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

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
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _listen_until_lost(self) -> None:
        lost = asyncio.Event()
        conn = await self._store.listen(self._cache.apply_payload, lost.set)
        try:
            await self._cache.synchronize()
            self.connected.set()
            log.info("change_listener_up")
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._keepalive)
                    break
                await asyncio.wait_for(conn.execute("SELECT 1"), self._keepalive)
                if self._cache.filter_overfull:
                    await self._cache.rebuild_filter()
            log.warning("change_listener_lost")
        finally:
            with contextlib.suppress(Exception):
                conn.terminate()
