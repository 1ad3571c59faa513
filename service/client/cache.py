"""The client's local decision cache: a repeated check answered in-process, kept honest by WatchChanges.

What is kept, and for how long:
- only decisions that are safe to repeat: about an identified key (a key_id), of a key without rate
  limits or credits (each of its checks counts: `limited`), never RATE_LIMITED / USAGE_EXCEEDED, never
  an unidentified key (KEY_NOT_FOUND for a digest nobody knows yet cannot be dropped by an event, which
  names key ids only: the key may be created a moment later), never an error (UNAVAILABLE);
- at most `max_entries` (least recently used dropped first) and at most `ttl` seconds each, whatever
  the stream says: the bound on staleness if the stream misses something silently;
- never past the key's own end (`key_expire_time`), compared with the wall clock on every hit;
- only while the stream is live and the server's own feed is listening.
What drops entries: a key event drops every decision about that key id, a binding event every decision
about that (workspace, resource), a RESYNC or a broken stream everything. A decision whose request was
sent less than `SETTLE` seconds after an event touching it (or a resync) is not kept: another replica
(or worker) may not have applied that change yet, and keygate bounds that lag by one second.

Keys are held as SHA-256 digests, never as given. Thread-safe: SyncAuthorizer's watcher is a thread.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..domain.errors import InvalidArgument
from ..v1 import authz_pb2
from .decision import Decision, DecisionCode

SETTLE = 1.0  # seconds: keygate's bound on a change reaching every replica's cache
_PRUNE_AT = 4096  # remembered event times before the stale ones are dropped
_STATEFUL = frozenset({DecisionCode.RATE_LIMITED, DecisionCode.USAGE_EXCEEDED, DecisionCode.KEY_NOT_FOUND})


@dataclass(frozen=True, slots=True)
class LocalCache:
    """Turns the local decision cache on (pass it to Authorizer or SyncAuthorizer; off without one).

    `watch_key`: a key of this service's own, holding `apikeys:view` over its whole workspace (a root key
    for every workspace), with which it subscribes to WatchChanges; only decisions about keys of that
    workspace are cached. `ttl` bounds how long any decision is reused (seconds); `max_entries` the memory.
    `backoff_max`: the longest pause before resubscribing after a broken stream."""

    watch_key: str = field(repr=False)
    max_entries: int = 10_000
    ttl: float = 5.0
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if not self.watch_key:
            raise InvalidArgument("watch_key", "a key with apikeys:view is needed to watch changes")
        if self.max_entries < 1:
            raise InvalidArgument("max_entries", "must be at least 1")
        if not 0 < self.ttl <= 3600:
            raise InvalidArgument("ttl", "must be between 0 and 3600 seconds")
        if not 0 < self.backoff_max <= 300:
            raise InvalidArgument("backoff_max", "must be between 0 and 300 seconds")


Question = tuple[bytes, str, str, str, str]  # (key digest, resource, action, workspace_id, client_address)
Slot = tuple[str, str]  # (workspace, folded resource)


def question(key: str, resource: str, action: str, workspace_id: str, client_address: str) -> Question:
    return hashlib.sha256(key.encode()).digest(), resource, action, workspace_id, client_address


def fold(resource: str) -> str:
    """A resource as any of its spellings folds: keygate's canonical form changes only the collection's case
    and a UUID's case and hyphens, so two spellings of one resource fold alike (others may too: they are
    merely dropped together)."""
    return resource.lower().replace("-", "")


class _Entry(NamedTuple):
    decision: Decision
    fresh_until: float  # monotonic
    ends: float  # the key's end, wall clock (time.time()); inf when it has none
    key_id: str
    slot: Slot | None


class DecisionCache:
    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._entries: OrderedDict[Question, _Entry] = OrderedDict()
        self._by_key: dict[object, set[Question]] = {}  # key id -> questions
        self._by_slot: dict[object, set[Question]] = {}  # slot -> questions
        self._touched: dict[object, float] = {}  # key id or slot -> when an event last touched it
        self._resynced = -math.inf  # when everything was last dropped
        self.live = False  # the stream is up and the server hears changes: only then is anything kept
        self.scope: str | None = None  # the workspace the stream covers; None: every one
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        """Read before a request is sent: `keep` refuses its answer if an event came since (or just before)."""
        return self._clock()

    def get(self, asked: Question) -> Decision | None:
        with self._lock:
            entry = self._entries.get(asked)
            if entry is None:
                return None
            if self._clock() >= entry.fresh_until or self._wall() >= entry.ends:
                self._drop(asked)
                return None
            self._entries.move_to_end(asked)
            return entry.decision

    def keep(self, asked: Question, response: authz_pb2.CheckResponse, decision: Decision, sent: float) -> None:
        """Remember `decision` (the answer to `response`'s request, sent at `sent`) if it is safe to repeat."""
        if (not self.live or not decision.key_id or response.limited or decision.code in _STATEFUL
                or (self.scope is not None and decision.workspace_id != self.scope)):
            return
        resource = asked[1]
        slot = (asked[3] or decision.workspace_id, fold(resource)) if resource else None
        ends = response.key_expire_time.ToMicroseconds() / 1e6 if response.HasField("key_expire_time") else math.inf
        with self._lock:
            settled = sent - SETTLE
            touched = self._touched
            if (not self.live or self._resynced > settled or touched.get(decision.key_id, -math.inf) > settled
                    or (slot is not None and touched.get(slot, -math.inf) > settled)):
                return
            if asked in self._entries:
                self._drop(asked)
            self._entries[asked] = _Entry(decision, self._clock() + self._ttl, ends, decision.key_id, slot)
            self._by_key.setdefault(decision.key_id, set()).add(asked)
            if slot is not None:
                self._by_slot.setdefault(slot, set()).add(asked)
            if len(self._entries) > self._max:
                self._drop(next(iter(self._entries)))
                self.evictions += 1

    def apply(self, event: authz_pb2.ChangeEvent) -> None:
        """One WatchChanges event: drop what it touches."""
        if event.kind == authz_pb2.KEY_CHANGED:
            self._forget(event.key_id, self._by_key)
        elif event.kind == authz_pb2.BINDING_CHANGED:
            self._forget((event.workspace_id, fold(event.resource)), self._by_slot)
        else:  # RESYNC, or a kind this client does not know: assume anything changed
            self.reset(live=event.kind == authz_pb2.RESYNC and event.listening,
                       scope=event.workspace_id or None)

    def reset(self, live: bool, scope: str | None = None) -> None:
        """Drop everything (a resync, a broken stream); keep decisions from now on only if `live`."""
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._by_slot.clear()
            self._touched.clear()
            self._resynced = self._clock()
            self.live, self.scope = live, scope

    def _forget(self, touched: str | Slot, index: dict[object, set[Question]]) -> None:
        with self._lock:
            now = self._clock()
            if len(self._touched) >= _PRUNE_AT:
                self._touched = {k: t for k, t in self._touched.items() if t > now - SETTLE}
            self._touched[touched] = now
            for asked in index.pop(touched, set()):
                self._drop(asked)

    def _drop(self, asked: Question) -> None:
        entry = self._entries.pop(asked, None)
        if entry is None:
            return
        _discard(self._by_key, entry.key_id, asked)
        if entry.slot is not None:
            _discard(self._by_slot, entry.slot, asked)


def _discard(index: dict[object, set[Question]], at: object, asked: Question) -> None:
    held = index.get(at)
    if held is not None:
        held.discard(asked)
        if not held:
            del index[at]
