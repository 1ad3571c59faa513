"""The change feed's fan-out: each committed change this process hears, handed to every WatchChanges stream.

Fed by the same LISTEN/NOTIFY subscription as the process's own cache (KeyCache hands on each change it
applies, and says when the listener is lost or back), so any worker of `--workers N` can serve a stream.

Every subscriber has a bounded queue. One that does not keep up (its queue full) is ended, not waited
for and not buffered without bound: its stream closes with RESOURCE_EXHAUSTED and the client resubscribes
(clearing what it cached, since it missed events). Events carry ids, workspaces and resource names, never
a change's filter fingerprints (derived from key digests): `Event` has no field that could hold one.

Filtering: a subscriber bound to a workspace gets the key and binding events of that workspace only (a
key id of another workspace is not its business); one for every workspace (a root key) gets all. A key
event whose workspace a writer did not name (an older replica) reaches a workspace subscriber as a
resync: it may concern it, and naming it could leak another workspace's key id.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from uuid import UUID

from ..domain import changes

QUEUE_SIZE = 1024  # events a subscriber may have waiting before it is ended as too slow


@dataclass(frozen=True, slots=True)
class KeyEvent:
    key_id: UUID
    workspace_id: str


@dataclass(frozen=True, slots=True)
class BindingEvent:
    workspace_id: str
    resource: str


@dataclass(frozen=True, slots=True)
class Resync:
    """Changes may have been missed: drop everything. `listening`: whether the feed hears changes now."""

    listening: bool


Event = KeyEvent | BindingEvent | Resync


class Ended(Exception):
    """The subscription is over: `slow` when the subscriber fell behind, else the feed closed (shutdown)."""

    def __init__(self, slow: bool) -> None:
        super().__init__("subscriber fell behind" if slow else "change feed closed")
        self.slow = slow


class Subscriber:
    """One stream's queue. `workspace` None: every workspace."""

    def __init__(self, workspace: str | None, size: int) -> None:
        self.workspace = workspace
        self._size = size
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._ended: Ended | None = None

    def offer(self, event: Event) -> bool:
        """Queue `event` (if it concerns this subscriber); False once the subscriber is ended."""
        if self._ended is not None:
            return False
        if not self._concerns(event):
            return True
        if len(self._queue) >= self._size:
            self.end(Ended(slow=True))
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    def _concerns(self, event: Event) -> bool:
        workspace = self.workspace
        return workspace is None or isinstance(event, Resync) or event.workspace_id == workspace

    def end(self, why: Ended) -> None:
        """End the subscription: queued events are dropped (the client clears its cache anyway)."""
        self._ended = why
        self._queue.clear()
        self._ready.set()

    async def next(self) -> Event:
        """The next event, waiting for one; Ended when the subscription is over."""
        while not self._queue:
            if self._ended is not None:
                raise self._ended
            self._ready.clear()
            await self._ready.wait()
        if self._ended is not None:
            raise self._ended
        return self._queue.popleft()


class Feed:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self.listening = False  # whether the process's change listener hears changes now
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, workspace: str | None) -> Subscriber:
        """A new subscriber; its first event says whether the feed is listening. Ended(slow=False) once
        the feed is closed."""
        if self._closed:
            raise Ended(slow=False)
        subscriber = Subscriber(workspace, self._queue_size)
        subscriber.offer(Resync(self.listening))
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, change: changes.Change) -> None:
        """A change heard on the feed: its ids and names only, to every subscriber it concerns."""
        if not self._subscribers:
            return
        if isinstance(change, changes.BindingChanged):
            self._offer(BindingEvent(change.workspace_id, change.resource))
        elif change.workspace_id is None:  # an older writer: only the subscribers for every workspace
            self._offer(KeyEvent(change.key_id, ""), unnamed=True)
        else:
            self._offer(KeyEvent(change.key_id, change.workspace_id))

    def resync(self, listening: bool) -> None:
        """The listener was lost (False) or is back (True): changes may have been missed meanwhile."""
        self.listening = listening
        self._offer(Resync(listening))

    def close(self) -> None:
        """Shutting down: end every subscription now, refuse new ones."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.end(Ended(slow=False))
        self._subscribers.clear()

    def _offer(self, event: Event, *, unnamed: bool = False) -> None:
        for subscriber in list(self._subscribers):
            shown = Resync(self.listening) if unnamed and subscriber.workspace is not None else event
            if not subscriber.offer(shown):
                self._subscribers.discard(subscriber)
