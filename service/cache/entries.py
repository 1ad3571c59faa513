"""The cached entries, each map bounded (LRU): credentials by digest, digests known not to be keys,
bindings by (workspace, resource), and an index from key id to its cached digests (a key has one
digest per live secret) so a change to a key drops all of them."""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar
from uuid import UUID

from ..domain.decision import Binding, Credential
from ..store.interface import Slot
from .lru import LRU

__all__ = ["MISS", "Entries", "Entry", "Miss", "Slot"]

V = TypeVar("V", covariant=True)


class Miss:
    """The answer is not in memory: ask the awaitable read, which may go to the database."""


MISS = Miss()


class Entry(NamedTuple, Generic[V]):
    value: V
    fetched_at: float  # when the read that produced it began (monotonic)


class Entries:
    def __init__(self, max_keys: int, max_negative: int, max_bindings: int) -> None:
        self.credentials: LRU[bytes, Entry[Credential]] = LRU(max_keys, self._forget)
        self.negative: LRU[bytes, float] = LRU(max_negative)  # digest -> when it was found missing
        self.bindings: LRU[Slot, Entry[tuple[Binding, ...]]] = LRU(max_bindings)
        self._by_key: dict[UUID, set[bytes]] = {}

    def keep_credential(self, digest: bytes, credential: Credential | None, fetched_at: float) -> None:
        """A read's answer: the digest's credential, or None for no such key."""
        if credential is None:
            self._drop_digest(digest)
            self.negative.put(digest, fetched_at)
            return
        self.negative.pop(digest)
        self.credentials.put(digest, Entry(credential, fetched_at))
        self._by_key.setdefault(credential.key_id, set()).add(digest)

    def keep_bindings(self, slot: Slot, bindings: tuple[Binding, ...], fetched_at: float) -> None:
        self.bindings.put(slot, Entry(bindings, fetched_at))

    def drop_key(self, key_id: UUID) -> None:
        """Every cached digest of the key."""
        for digest in self._by_key.pop(key_id, set()):
            self.credentials.pop(digest)

    def clear(self) -> None:
        self.credentials.clear()
        self._by_key.clear()
        self.negative.clear()
        self.bindings.clear()

    def indexed(self) -> int:
        """Digests in the key index: always the number of cached credentials."""
        return sum(len(digests) for digests in self._by_key.values())

    def _forget(self, digest: bytes, entry: Entry[Credential]) -> None:
        """Evicted from the LRU: keep the key index in step."""
        digests = self._by_key.get(entry.value.key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_key[entry.value.key_id]

    def _drop_digest(self, digest: bytes) -> None:
        entry = self.credentials.pop(digest)
        if entry is not None:
            self._forget(digest, entry)
