"""A KeyCache over the in-memory store, on a clock the test moves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from keygate.cache.keys import CacheSettings, KeyCache
from keygate.domain.keys import digest
from keygate.domain.permissions import Catalog
from keygate.domain.policy import KeySpec

from .fakes import MemoryStore

TTL = 10.0
SETTINGS = CacheSettings(max_keys=4, max_negative=4, max_bindings=4, max_decisions=4, ttl=TTL,
                         outage_grace=60.0, refresh_ahead=0.8, unknown_key_lookups=2.0)


class Clock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.build()


@pytest.fixture
def cache(store: MemoryStore, catalog: Catalog, clock: Clock) -> KeyCache:
    return KeyCache(store, catalog, SETTINGS, clock)


async def add_key(store: MemoryStore, name: str = "k", workspace: str = "w",
                  expire_time: datetime | None = None) -> tuple[uuid.UUID, bytes]:
    """A stored key: its id and its secret's digest."""
    key_id, secret = uuid.uuid4(), digest(f"secret-{uuid.uuid4()}")
    async with store.transaction() as tx:
        await tx.insert_key(key_id, KeySpec(name=name, workspace_id=workspace, permissions=("chatflows:view",),
                                            expire_time=expire_time), secret, "k...y", None)
    return key_id, secret


NOW = datetime(2026, 1, 1, tzinfo=UTC)
