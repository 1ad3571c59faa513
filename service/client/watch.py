"""The WatchChanges subscription behind a local decision cache: one asyncio task (Authorizer) or one daemon
thread (SyncAuthorizer) per client, applying each event to the cache.

Whenever the stream ends (keygate restarted or shut down, this subscriber fell behind, the network broke,
the watch key was refused) the cache is cleared and stops keeping decisions, and the subscription is
retried after a full-jitter pause that doubles up to `LocalCache.backoff_max` (reset once an event
arrives). The first event of every stream is a RESYNC, which turns keeping back on (when keygate's own
feed is listening). A stream that goes silent without breaking is covered by the cache's ttl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import grpc

from ..v1 import authz_pb2, authz_pb2_grpc
from .cache import DecisionCache, LocalCache
from .settings import Retry

log = logging.getLogger("keygate.client")
_REQUEST = authz_pb2.WatchChangesRequest()
BACKOFF_BASE = 0.05


class _Subscription:
    """What both watchers share: the call's metadata, the cache, and what a broken stream does."""

    def __init__(self, cache: DecisionCache, settings: LocalCache) -> None:
        self.cache = cache
        self.metadata = (("authorization", f"Bearer {settings.watch_key}"),)
        self._backoff = Retry(base=BACKOFF_BASE, cap=settings.backoff_max)
        self.failed = 0

    def received(self, event: authz_pb2.ChangeEvent) -> None:
        self.failed = 0
        self.cache.apply(event)

    def broken(self, code: grpc.StatusCode | None) -> float:
        """The stream ended: clear the cache; the pause before subscribing again."""
        self.cache.reset(live=False)
        self.failed += 1
        if code is not None:
            log.warning("keygate change stream ended (%s); local decision cache cleared, resubscribing", code.name)
        return self._backoff.pause(self.failed)


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN


class AsyncWatcher(_Subscription):
    def __init__(self, stub: authz_pb2_grpc.AuthzServiceStub, cache: DecisionCache, settings: LocalCache) -> None:
        super().__init__(cache, settings)
        self._stub = stub
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="keygate-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.cache.reset(live=False)

    async def _run(self) -> None:
        while True:
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            try:
                call: Any = self._stub.WatchChanges(_REQUEST, metadata=self.metadata)
                async for event in call:
                    self.received(event)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            await asyncio.sleep(self.broken(code))


class ThreadWatcher(_Subscription):
    def __init__(self, stub: authz_pb2_grpc.AuthzServiceStub, cache: DecisionCache, settings: LocalCache) -> None:
        super().__init__(cache, settings)
        self._stub = stub
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keygate-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)
        self.cache.reset(live=False)

    def _run(self) -> None:
        while not self._stopping.is_set():
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._call = self._stub.WatchChanges(_REQUEST, metadata=self.metadata)
                for event in self._call:
                    self.received(event)
            except grpc.RpcError as error:
                code = None if self._stopping.is_set() else _code(error)
            self._stopping.wait(self.broken(code))
