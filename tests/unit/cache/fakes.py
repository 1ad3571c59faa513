"""An in-memory store implementing store/interface.py: a real implementation of the Protocols, not a mock.

Keys, secrets, bindings and audit events live in dicts; a transaction works on a copy and commits by
swapping it in (a rollback is dropping the copy), then tells `on_commit` callbacks and listeners of its
changes, as PostgreSQL's NOTIFY does. For tests it also counts lookups, can be made unreachable
(every use raises Unavailable, as the PostgreSQL store does once it knows), and can hold lookups at a
gate so a test decides when an in-flight read finishes.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID

from keygate.domain import changes
from keygate.domain.decision import Binding
from keygate.domain.errors import Unavailable
from keygate.domain.keys import fingerprint
from keygate.domain.policy import KeySpec
from keygate.domain.records import AuditEvent, AuditQuery, BindingRecord, KeyRecord
from keygate.store.interface import Slot


@dataclass
class Tables:
    keys: dict[UUID, KeyRecord] = field(default_factory=dict)
    secrets: dict[bytes, tuple[UUID, datetime | None]] = field(default_factory=dict)  # digest -> key, expiry
    bindings: dict[tuple[str, str, UUID], BindingRecord] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    server_secrets: dict[str, bytes] = field(default_factory=dict)


class MemoryReader:
    """`Reads` over one snapshot of the tables."""

    def __init__(self, store: MemoryStore, tables: Tables) -> None:
        self._store = store
        self._tables = tables

    async def key_by_digest(self, digest: bytes) -> tuple[KeyRecord, datetime | None] | None:
        self._store.lookups += 1
        await self._store.passed_gate()
        found = self._tables.secrets.get(digest)
        if found is None or found[0] not in self._tables.keys:
            return None
        return self._tables.keys[found[0]], found[1]

    async def bindings_for_many(self, slots: Sequence[Slot]) -> dict[Slot, tuple[Binding, ...]]:
        await self._store.passed_gate()
        self._store.binding_reads.append(len(slots))
        found: dict[Slot, list[Binding]] = {slot: [] for slot in slots}
        for b in self._tables.bindings.values():
            if (b.workspace_id, b.resource) in found:
                found[(b.workspace_id, b.resource)].append(Binding(b.resource, b.key_id, b.actions, b.workspace_id))
        return {slot: tuple(bindings) for slot, bindings in found.items()}

    async def count_digests(self) -> int:
        return len(self._tables.secrets)

    async def digests(self, batch: int = 10_000) -> AsyncIterator[list[bytes]]:
        stored = list(self._tables.secrets)
        for start in range(0, len(stored), batch):
            yield stored[start:start + batch]

    async def get_key(self, key_id: UUID) -> KeyRecord | None:
        return self._tables.keys.get(key_id)

    async def list_keys(self, workspace_id: str | None, after: tuple[datetime, UUID] | None, limit: int,
                        ids: list[UUID] | None = None) -> list[KeyRecord]:
        keys = sorted(self._tables.keys.values(), key=lambda k: (k.create_time, k.id))
        return [k for k in keys if (workspace_id is None or k.spec.workspace_id == workspace_id)
                and (after is None or (k.create_time, k.id) > after)
                and (ids is None or k.id in ids)][:limit]

    async def secret_owners(self, digests: Sequence[bytes]) -> dict[bytes, UUID]:
        return {d: self._tables.secrets[d][0] for d in digests if d in self._tables.secrets}

    async def existing_keys(self, key_ids: Sequence[UUID]) -> set[UUID]:
        return {k for k in key_ids if k in self._tables.keys}

    async def server_secret(self, name: str) -> bytes:
        return self._tables.server_secrets.setdefault(name, name.encode())

    async def has_root_key(self) -> bool:
        return any(k.root for k in self._tables.keys.values())

    async def list_bindings(self, *, workspace_id: str | None, resource: str | None = None,
                            key_id: UUID | None = None) -> list[BindingRecord]:
        return sorted((b for b in self._tables.bindings.values()
                       if (workspace_id is None or b.workspace_id == workspace_id)
                       and (resource is None or b.resource == resource) and (key_id is None or b.key_id == key_id)),
                      key=lambda b: (b.workspace_id, b.resource, b.create_time, b.key_id))

    async def bindings_of_keys(self, key_ids: Sequence[UUID]) -> set[tuple[str, str, UUID]]:
        return {(w, r, k) for (w, r, k) in self._tables.bindings if k in key_ids}

    async def list_audit(self, query: AuditQuery, before_id: int | None, limit: int) -> list[AuditEvent]:
        events = [e for e in reversed(self._tables.audit)
                  if (query.workspace_id is None or e.workspace_id == query.workspace_id)
                  and (query.key_id is None or e.target_key_id == query.key_id)
                  and (query.actor_key_id is None or e.actor_key_id == query.actor_key_id)
                  and (not query.action or e.action == query.action)
                  and (before_id is None or e.id < before_id)]
        return events[:limit]


class MemoryTx(MemoryReader):
    """`Writes`: reads and writes on the transaction's own copy of the tables."""

    def __init__(self, store: MemoryStore, tables: Tables) -> None:
        super().__init__(store, tables)
        self.changes: list[changes.Change] = []

    async def lock_key(self, key_id: UUID) -> KeyRecord | None:
        return self._tables.keys.get(key_id)

    async def insert_key(self, key_id: UUID, spec: KeySpec, digest: bytes, display: str,
                         created_by: UUID | None) -> KeyRecord:
        now = datetime.now(UTC)
        record = KeyRecord(id=key_id, spec=spec, display=display, create_time=now, update_time=now,
                           created_by=created_by)
        self._tables.keys[key_id] = record
        self._tables.secrets[digest] = (key_id, None)
        self.changes.append(changes.KeyChanged(key_id, (fingerprint(digest),)))
        return record

    async def update_key(self, key_id: UUID, spec: KeySpec) -> KeyRecord:
        old = self._tables.keys[key_id]
        record = replace(old, spec=spec, update_time=datetime.now(UTC), version=old.version + 1)
        self._tables.keys[key_id] = record
        self.changes.append(changes.KeyChanged(key_id))
        return record

    async def delete_key(self, key_id: UUID) -> None:
        tables = self._tables
        tables.keys.pop(key_id, None)
        tables.secrets = {d: s for d, s in tables.secrets.items() if s[0] != key_id}
        tables.bindings = {slot: b for slot, b in tables.bindings.items() if b.key_id != key_id}
        self.changes.append(changes.KeyChanged(key_id, bindings_removed=True))

    async def replace_secret(self, key_id: UUID, digest: bytes, display: str,
                             old_secrets_expire: datetime) -> KeyRecord:
        tables = self._tables
        for d, (owner, expiry) in list(tables.secrets.items()):
            if owner == key_id:
                tables.secrets[d] = (owner, old_secrets_expire if expiry is None else min(expiry, old_secrets_expire))
        tables.secrets[digest] = (key_id, None)
        old = tables.keys[key_id]
        record = replace(old, display=display, update_time=datetime.now(UTC), version=old.version + 1)
        tables.keys[key_id] = record
        self.changes.append(changes.KeyChanged(key_id, (fingerprint(digest),)))
        return record

    async def lock_imports(self) -> None:
        """One transaction at a time commits here anyway."""

    async def add_usage(self, usage: Mapping[UUID, tuple[int, datetime]]) -> None:
        for key_id, (count, last) in usage.items():
            old = self._tables.keys.get(key_id)
            if old is not None:
                self._tables.keys[key_id] = replace(old, usage_count=old.usage_count + count,
                                                    last_used_time=max(old.last_used_time or last, last))

    async def upsert_binding(self, workspace_id: str, resource: str, key_id: UUID, actions: tuple[str, ...],
                             created_by: UUID | None) -> BindingRecord:
        record = BindingRecord(workspace_id, resource, key_id, actions, datetime.now(UTC), created_by)
        self._tables.bindings[(workspace_id, resource, key_id)] = record
        self.changes.append(changes.BindingChanged(workspace_id, resource))
        return record

    async def delete_binding(self, workspace_id: str, resource: str, key_id: UUID) -> bool:
        found = self._tables.bindings.pop((workspace_id, resource, key_id), None)
        self.changes.append(changes.BindingChanged(workspace_id, resource))
        return found is not None

    async def audit(self, event: AuditEvent) -> None:
        self._tables.audit.append(replace(event, id=len(self._tables.audit) + 1, event_time=datetime.now(UTC)))


class MemoryListening:
    def __init__(self, store: MemoryStore, on_change: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        self._store = store
        self.on_change = on_change
        self.on_lost = on_lost

    async def ping(self) -> int:
        if not self._store.reachable:
            raise Unavailable("the store is unreachable")
        if self._store.silent:  # a stalled backend or network: the ping is never answered
            await asyncio.Event().wait()
        return self._store.commits

    def close(self) -> None:
        if self in self._store.listeners:
            self._store.listeners.remove(self)


class MemoryStore:
    """KeySource, ChangeFeed, AdminStore and UsageStore in memory."""

    def __init__(self) -> None:
        self.tables = Tables()
        self.reachable = True
        self.silent = False  # listeners' pings go unanswered
        self.lookups = 0  # key_by_digest calls (counted as they begin)
        self.binding_reads: list[int] = []  # slots per bindings_for_many call
        self.gate: asyncio.Event | None = None  # when set to an unset Event, lookups wait for it
        self.listeners: list[MemoryListening] = []
        self.suspected = 0
        self.commits = 0  # transactions committed: the "WAL position" pings answer
        self._on_commit: list[Callable[[changes.Change], None]] = []

    async def passed_gate(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if not self.reachable:  # it went away while the read was under way
            raise Unavailable("the store is unreachable")

    def on_commit(self, callback: Callable[[changes.Change], None]) -> None:
        self._on_commit.append(callback)

    def _check(self) -> None:
        if not self.reachable:
            raise Unavailable("the store is unreachable")

    @asynccontextmanager
    async def lookup(self) -> AsyncIterator[MemoryReader]:
        self._check()
        yield MemoryReader(self, self.tables)

    read = lookup

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        self._check()
        tx = MemoryTx(self, copy.deepcopy(self.tables))
        yield tx
        self.tables = tx._tables
        self.commits += 1
        for change in tx.changes:
            for callback in self._on_commit:
                callback(change)
            payload = changes.encode(change, time.time())
            for listening in list(self.listeners):
                listening.on_change(payload)

    async def listen(self, on_change: Callable[[str], None], on_lost: Callable[[], None]) -> MemoryListening:
        self._check()
        listening = MemoryListening(self, on_change, on_lost)
        self.listeners.append(listening)
        return listening

    def suspect(self) -> None:
        self.suspected += 1
