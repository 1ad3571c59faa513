"""Single-flight: one read per slot at a time, shared by every caller that needs it.

A read runs as its own task, so a caller that gives up (deadline, cancel) does not cancel it for the
others. Its result is kept only if no invalidation overlapped it: a read that began before a change
may have seen the old row, and keeping it would undo the invalidation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from .freshness import Freshness

V = TypeVar("V")

Fetch = Callable[[], Awaitable[V]]
Keep = Callable[[V, float], None]  # (value, when its read began)


class Flight:
    def __init__(self, freshness: Freshness) -> None:
        self._freshness = freshness
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        """Reads under way."""
        return len(self._inflight)

    def load(self, slot: Hashable, fetch: Fetch[V], keep: Keep[V]) -> asyncio.Future[V]:
        """The value of the read for `slot` (joining one under way); cancelling it leaves the read running."""
        return asyncio.shield(self.start(slot, fetch, keep))

    def start(self, slot: Hashable, fetch: Fetch[V], keep: Keep[V]) -> asyncio.Future[V]:
        """Start the read for `slot` unless one is under way (a background refresh ignores the result)."""
        task = self._inflight.get(slot)
        if task is None:
            task = asyncio.ensure_future(self.fetch_and_keep(fetch, keep))
            self._inflight[slot] = task
            task.add_done_callback(lambda done: self._finish(slot, done))
        return task

    def _finish(self, slot: Hashable, task: asyncio.Future[Any]) -> None:
        del self._inflight[slot]
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh may have no other reader

    async def fetch_and_keep(self, fetch: Fetch[V], keep: Keep[V]) -> V:
        """Read, and keep the result unless an invalidation happened meanwhile."""
        freshness = self._freshness
        generation, started = freshness.generation, freshness.clock()
        value = await fetch()
        if generation == freshness.generation:
            keep(value, started)
        return value
