"""The verified-key cache stays within its configured bounds, against a real PostgreSQL.

Driven directly (keygate.cache.keys.KeyCache, no gRPC) with small bounds of 1,000 entries each.
Database paths use 5,000 to 10,000 distinct keys, five to ten times the bounds (each miss is a
real query, so a million of them would take minutes); the million distinct keys go through the
flood path, where the filter of known keys answers without the database once the change listener
has loaded it (and the few that still reach the database fill the negative cache to its bound).

Memory is the process's resident size (psutil), sampled through the flood: tracemalloc would
slow the million lookups down several times over.

Queries are counted honestly with asyncpg's own query logger on every pooled connection: each
`key_by_digest` lookup that reaches PostgreSQL is one logged query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import psutil
import pytest

from keygate.cache.keys import CacheSettings, KeyCache
from keygate.cache.listener import ChangeListener
from keygate.domain.permissions import Catalog
from keygate.store.postgres import Store

BOUND = 1_000
SETTINGS = CacheSettings(max_keys=BOUND, max_negative=BOUND, max_bindings=BOUND)
STORED = 10_000  # keys in the database: ten times the bound
DISTINCT = 5_000  # distinct bindings slots / unknown keys looked up through the database
FLOOD = 1_000_000  # distinct unknown keys in the flood
CALLERS = 250  # concurrent callers in the flood
CHUNK = 1_000  # made-up keys a caller asks for between two stored ones
BURST = 1_000  # lookups arriving at once
PARALLEL = 8  # concurrent lookups on the database paths (the pool holds 10 connections)
MAX_FLOOD_QUERIES = 0.10  # at most this fraction of the flood may reach the database
MAX_FLOOD_MEMORY = 64 * 2**20  # bytes of RSS growth; a million cache entries would take ~200 MB

T = TypeVar("T")


@dataclass
class Counted:
    """A Store whose every connection counts the key lookups it sends to PostgreSQL."""

    store: Store
    lookups: int = 0
    statements: list[str] = field(default_factory=list)

    def log(self, record: asyncpg.connection.LoggedQuery) -> None:
        if "FROM key_secrets WHERE digest" in record.query:
            self.lookups += 1

    async def settled(self) -> int:
        """The count once the loggers' callbacks (scheduled with call_soon) have run."""
        await asyncio.sleep(0)
        return self.lookups


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[Counted]:
    counted = Counted(None)

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(counted.log)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10, init=init)
    counted.store = Store(pool, database_url)
    yield counted
    await counted.store.close()


@pytest.fixture
def cache(counted: Counted) -> KeyCache:
    return KeyCache(counted.store, Catalog.build(), SETTINGS)


async def store_keys(database_url: str, count: int) -> list[tuple[bytes, uuid.UUID]]:
    """`count` keys written straight into the tables (COPY): (digest, key id) of each."""
    keys = [(hashlib.sha256(os.urandom(32)).digest(), uuid.uuid4()) for _ in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table(
            "api_keys", columns=["id", "workspace_id", "name", "permissions", "display"],
            records=[(key_id, "ws1", f"key {i}", ["chatflows:view"], "fl_xxxx...xxxx")
                     for i, (_, key_id) in enumerate(keys)])
        await conn.copy_records_to_table("key_secrets", columns=["digest", "key_id"], records=keys)
    finally:
        await conn.close()
    return keys


def random_digests(count: int) -> list[bytes]:
    block = os.urandom(32 * count)
    return [block[i:i + 32] for i in range(0, len(block), 32)]


async def in_waves(items: Sequence[T], width: int, look_up: Callable[[T], Awaitable[object]],
                   after_each: Callable[[], None]) -> list[object]:
    """Look `items` up `width` at a time (concurrently), calling `after_each` after every wave."""
    results: list[object] = []
    for start in range(0, len(items), width):
        results += await asyncio.gather(*(look_up(item) for item in items[start:start + width]))
        after_each()
    return results


def within_bounds(cache: KeyCache) -> Callable[[], None]:
    def check() -> None:
        sizes = cache.sizes()
        assert max(sizes["keys"], sizes["negative"], sizes["bindings"]) <= BOUND, sizes
    return check


# --- database paths -----------------------------------------------------------------------


async def test_verified_keys_stay_within_max_keys_and_the_latest_stay_cached(
        database_url: str, counted: Counted, cache: KeyCache) -> None:
    keys = await store_keys(database_url, STORED)

    found = await in_waves([d for d, _ in keys], PARALLEL, cache.credential, within_bounds(cache))

    assert [c.key_id for c in found] == [key_id for _, key_id in keys]
    assert cache.sizes()["keys"] == BOUND
    before = await counted.settled()
    again = [await cache.credential(d) for d, _ in keys[-BOUND:]]  # the most recent are answered from memory
    assert await counted.settled() == before and all(c is not None for c in again)


async def test_bindings_stay_within_max_bindings(cache: KeyCache) -> None:
    slots = [("ws1", f"chatflows/{i}") for i in range(DISTINCT)]

    found = await in_waves(slots, PARALLEL, lambda slot: cache.bindings(*slot), within_bounds(cache))

    assert found == [()] * DISTINCT
    assert cache.sizes()["bindings"] == BOUND


async def test_unknown_keys_stay_within_max_negative(counted: Counted, cache: KeyCache) -> None:
    unknown = random_digests(DISTINCT)

    found = await in_waves(unknown, PARALLEL, cache.credential, within_bounds(cache))

    assert found == [None] * DISTINCT
    assert await counted.settled() == DISTINCT  # no listener, no filter: each was a real query
    assert cache.sizes()["negative"] == BOUND


# --- the flood ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def synchronized(cache: KeyCache, store: Store) -> AsyncIterator[None]:
    """The change listener up and the filter of known keys loaded, as in a serving replica."""
    listener = ChangeListener(store, cache)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 30)
        assert cache.synchronized
        yield
    finally:
        await listener.stop()


def rss() -> int:
    return psutil.Process().memory_info().rss


async def test_a_million_unknown_keys_are_mostly_shed_by_the_filter_within_bounds(
        database_url: str, counted: Counted, cache: KeyCache, capsys: pytest.CaptureFixture[str]) -> None:
    """CALLERS concurrent callers, each asking for made-up keys one after another, and after every
    CHUNK of them for one stored key: every made-up key is refused, every stored key found (the
    filter has no false negatives), the caches stay within their bounds, at most MAX_FLOOD_QUERIES
    of the flood reaches the database, and the process's memory grows by far less than a million
    entries would take."""
    keys = await store_keys(database_url, STORED)
    check_bounds = within_bounds(cache)
    refused = found = 0
    peak = baseline = rss()

    async def caller(number: int) -> None:
        nonlocal refused, found, peak
        for chunk in range(FLOOD // CALLERS // CHUNK):
            for made_up in random_digests(CHUNK):
                answer = await cache.credential(made_up)
                refused += answer is None
                await asyncio.sleep(0)  # the next request of the flood
            stored_digest, stored_id = keys[(number * FLOOD // CALLERS // CHUNK + chunk) % STORED]
            credential = await cache.credential(stored_digest)
            found += credential is not None and credential.key_id == stored_id
            check_bounds()
            peak = max(peak, rss())

    async with synchronized(cache, counted.store):
        assert cache.sizes()["known"] == STORED
        queries_before = await counted.settled()
        started = time.monotonic()
        await asyncio.gather(*(caller(n) for n in range(CALLERS)))
        elapsed = time.monotonic() - started
        queries = await counted.settled() - queries_before

    line = (f"flood: {FLOOD} made-up keys in {elapsed:.1f}s, {queries} database lookups ({FLOOD // CHUNK} of them "
            f"for stored keys), memory growth {(peak - baseline) / 2**20:.1f} MB, sizes {cache.sizes()}")
    with capsys.disabled():
        print(f"\n{line}", end="")
    assert (refused, found) == (FLOOD, FLOOD // CHUNK), line
    assert queries <= MAX_FLOOD_QUERIES * FLOOD, line
    assert peak - baseline < MAX_FLOOD_MEMORY, line


async def test_a_burst_of_unknown_keys_sends_at_most_one_second_of_lookups_to_the_database(
        counted: Counted, cache: KeyCache) -> None:
    async with synchronized(cache, counted.store):
        before = await counted.settled()
        answers = await asyncio.gather(*(cache.credential(d) for d in random_digests(BURST)))
        queries = await counted.settled() - before

    assert answers == [None] * BURST
    assert queries <= SETTINGS.unknown_key_lookups, f"{queries} of a burst of {BURST} reached the database"
