"""What each part of keygate needs from storage, as small typed interfaces (structural: `typing.Protocol`).

The cache, the admin API, the usage recorder and the change listener depend on these, never on the
PostgreSQL store (store/postgres.py), so each can be tested against an in-memory implementation
(tests/unit/cache/fakes.py) and none can reach a method it was not meant to use. Two levels:
- what one connection offers: `Reads` (every read-only query; `KeyLookups` and `DigestScan` are the
  Check path's and the known-keys filter's share of it) and `Writes` (a transaction: reads plus every
  write; `UsageWrites` is the usage recorder's share). A read can never write: `read()` and `lookup()`
  hand out `Reads`, only `transaction()` hands out `Writes`;
- what a caller holds: `KeySource` (the cache), `ChangeFeed` (the change listener), `AdminStore`
  (the admin API and the Flowise import), `UsageStore` (the usage recorder).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol
from uuid import UUID

from ..domain import changes
from ..domain.decision import Binding
from ..domain.limits import RateLimit
from ..domain.policy import KeySpec
from ..domain.records import AuditEvent, AuditQuery, BindingRecord, KeyRecord
from .limits import CreditGrant, RateGrant

Slot = tuple[str, str]  # (workspace, resource): where bindings are kept


# --- one connection -----------------------------------------------------------------------------


class KeyLookups(Protocol):
    """The reads a Check may need: one key by its secret's digest, and the bindings of resources."""

    async def key_by_digest(self, digest: bytes) -> tuple[KeyRecord, datetime | None] | None:
        """The key a secret belongs to, with the secret's own expiry (set after rotation)."""
        ...

    async def bindings_for_many(self, slots: Sequence[Slot]) -> dict[Slot, tuple[Binding, ...]]:
        """The bindings of each slot, in one round trip; a slot without any maps to ()."""
        ...


class DigestScan(Protocol):
    """Every stored secret digest, for the cache's filter of known keys."""

    async def count_digests(self) -> int: ...

    def digests(self, batch: int = 10_000) -> AsyncIterator[list[bytes]]: ...


class Reads(KeyLookups, DigestScan, Protocol):
    """Every read-only query. Nothing here changes the database."""

    async def get_key(self, key_id: UUID) -> KeyRecord | None: ...

    async def list_keys(self, workspace_id: str | None, after: tuple[datetime, UUID] | None, limit: int,
                        ids: list[UUID] | None = None) -> list[KeyRecord]: ...

    async def secret_owners(self, digests: Sequence[bytes]) -> dict[bytes, UUID]: ...

    async def existing_keys(self, key_ids: Sequence[UUID]) -> set[UUID]: ...

    async def server_secret(self, name: str) -> bytes: ...

    async def has_root_key(self) -> bool: ...

    async def list_bindings(self, *, workspace_id: str | None, resource: str | None = None,
                            key_id: UUID | None = None) -> list[BindingRecord]: ...

    async def bindings_of_keys(self, key_ids: Sequence[UUID]) -> set[tuple[str, str, UUID]]: ...

    async def list_audit(self, query: AuditQuery, before_id: int | None, limit: int) -> list[AuditEvent]: ...


class UsageWrites(Protocol):
    async def add_usage(self, usage: Mapping[UUID, tuple[int, datetime]]) -> None:
        """Add counts and move last_used_time forward; keys deleted meanwhile are skipped."""
        ...


class Writes(Reads, UsageWrites, Protocol):
    """One transaction: its reads and its writes commit together or not at all. Every write that can
    change a Check answer announces its change to every replica when (and only if) it commits."""

    async def lock_key(self, key_id: UUID) -> KeyRecord | None:
        """The key, its row locked against other writers until this transaction ends."""
        ...

    async def insert_key(self, key_id: UUID, spec: KeySpec, digest: bytes, display: str,
                         created_by: UUID | None) -> KeyRecord: ...

    async def update_key(self, key_id: UUID, spec: KeySpec, changed: Sequence[str] = ()) -> KeyRecord: ...

    async def delete_key(self, key_id: UUID) -> None: ...

    async def replace_secret(self, key_id: UUID, digest: bytes, display: str,
                             old_secrets_expire: datetime) -> KeyRecord: ...

    async def lock_imports(self) -> None: ...

    async def upsert_binding(self, workspace_id: str, resource: str, key_id: UUID, actions: tuple[str, ...],
                             created_by: UUID | None) -> BindingRecord: ...

    async def delete_binding(self, workspace_id: str, resource: str, key_id: UUID) -> bool: ...

    async def audit(self, event: AuditEvent) -> None: ...


# --- what callers hold --------------------------------------------------------------------------


class KeySource(Protocol):
    """What the cache needs: bounded lookups for Checks, a scan of digests, the store's verdict on
    whether the database is reachable, and this process's own commits as they happen."""

    @property
    def reachable(self) -> bool: ...

    def on_commit(self, callback: Callable[[changes.Change], None]) -> None: ...

    def lookup(self) -> AbstractAsyncContextManager[KeyLookups]: ...

    def read(self) -> AbstractAsyncContextManager[DigestScan]: ...


class Listening(Protocol):
    """A live subscription to changes."""

    async def ping(self) -> int:
        """One round trip: once it is answered, every change committed before it was sent has arrived.
        Returns the primary's WAL position then, past the commit of each of them (for replicas)."""
        ...

    def close(self) -> None:
        """End the subscription at once (no round trip)."""
        ...


class ChangeFeed(Protocol):
    """What the change listener needs: a subscription to every replica's committed changes."""

    async def listen(self, on_change: Callable[[str], None], on_lost: Callable[[], None]) -> Listening:
        """Subscribe: `on_change` gets each change's payload, `on_lost` fires once if the subscription dies."""
        ...

    def suspect(self) -> None:
        """The subscription was lost: find out in the background whether the database went with it."""
        ...


class AdminStore(Protocol):
    """What the admin API and the Flowise import need: reads, and transactions."""

    def read(self) -> AbstractAsyncContextManager[Reads]: ...

    def transaction(self) -> AbstractAsyncContextManager[Writes]: ...


class UsageStore(Protocol):
    """What the usage recorder needs: a transaction that adds usage."""

    def transaction(self) -> AbstractAsyncContextManager[UsageWrites]: ...


class LeaseBook(Protocol):
    """The shared budget of rate limits and credits: atomic grants of leases, and returns of their unused
    part (store/limits.py has what each statement guarantees)."""

    async def grant_rate(self, key_id: UUID, limit: RateLimit, window_start_ms: int, want: int) -> RateGrant: ...

    async def return_rate(self, key_id: UUID, name: str, window_start_ms: int, unused: int) -> None: ...

    async def grant_credits(self, key_id: UUID, want: int, now: datetime) -> CreditGrant | None: ...

    async def return_credits(self, key_id: UUID, epoch: int, unused: int) -> None: ...


class LeaseStore(Protocol):
    """What the limits engine needs: the lease book, bounded like a Check's lookup."""

    def leases(self) -> AbstractAsyncContextManager[LeaseBook]: ...


class ReplayGuard(Protocol):
    """What a replica's answer must satisfy to stand in for the primary's. The cache keeps it: it hears
    every change (store/replicas.py says why the rule is sound)."""

    def floor(self) -> int | None:
        """The WAL position a replica must have replayed; None: read the primary (a change is unsettled)."""
        ...

    def vouches(self, digest: bytes) -> bool:
        """A replica that has replayed the floor found no such key: does that answer stand? If not, the
        primary confirms it (a key created a moment ago)."""
        ...
