"""Check-path lookups from a real streaming replica (tests/pgcluster.py), with lag injected by pausing
its replay: a lagging replica never refuses a valid key nor allows a revoked one, and a replica that is
down or hung costs at most part of one lookup bound (store/replicas.py, cache/replay.py)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import field_mask_pb2

from keygate.config import Settings
from keygate.domain.keys import digest
from keygate.server import App
from keygate.store.postgres import DatabaseSettings, Store
from keygate.store.replicas import Replicated
from keygate.v1 import authz_pb2, keys_pb2
from tests.pgcluster import Cluster

from .private_postgres import stopped
from .support import Client, auth, connect

TTL = 0.5  # seconds: entries are read again often, so a re-read from the lagging replica would show
LOOKUP_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def cluster(pg_dirs: Callable[[str], Path]) -> Iterator[Cluster]:
    """One primary and one streaming replica for the module; each test has a database of its own."""
    cluster = asyncio.run(Cluster.create(pg_dirs("replicas"), replicas=1))
    yield cluster
    asyncio.run(cluster.remove())


@pytest.fixture
async def database(cluster: Cluster) -> AsyncIterator[str]:
    """A migrated database's name; the replica's replay resumes after the test whatever it did."""
    name = f"kg_{uuid.uuid4().hex[:12]}"
    await cluster.create_database(name)
    yield name
    replica = cluster.replicas[0]
    if replica.running():
        await replica.resume_replay()


def reading_settings(cluster: Cluster, database: str) -> Settings:
    base = Settings(listen="127.0.0.1:0", metrics=None)
    return replace(base, cache=replace(base.cache, ttl=TTL), database=DatabaseSettings(
        lookup_timeout=LOOKUP_TIMEOUT, read_url=cluster.replicas[0].url(database)))


@asynccontextmanager
async def serving(settings: Settings, url: str) -> AsyncIterator[tuple[App, Client]]:
    app = await App.start(settings, url)
    try:
        await asyncio.wait_for(app.listener.connected.wait(), 10)
        async with connect(app) as client:
            yield app, client
    finally:
        await app.stop(grace=0)


@asynccontextmanager
async def writer_and_reader(cluster: Cluster, database: str) -> AsyncIterator[tuple[Client, App, Client]]:
    """A keygate on the primary alone (the writer: another replica of keygate), and one reading through
    the streaming replica (the reader)."""
    url = cluster.primary.url(database)
    async with serving(Settings(listen="127.0.0.1:0", metrics=None), url) as (_, writer), \
            serving(reading_settings(cluster, database), url) as (app, reader):
        yield writer, app, reader


def source(app: App) -> Replicated:
    assert isinstance(app.source, Replicated)
    return app.source


async def settled(app: App) -> None:
    """Until the reader's floor is settled (a ping after its last change) and the replica answers."""
    deadline = time.monotonic() + 5
    while app.cache.replay.floor() is None:
        assert time.monotonic() < deadline, "the replay floor never settled"
        await asyncio.sleep(0.05)


async def test_a_caught_up_replica_answers_the_lookups(cluster: Cluster, database: str) -> None:
    async with writer_and_reader(cluster, database) as (writer, app, reader):
        key = await writer.create()
        await cluster.wait_replayed()
        await settled(app)
        reads = source(app).replica_reads
        assert (await reader.check(key.api_key)).allowed
        assert source(app).replica_reads > reads


async def test_a_revocation_is_not_undone_by_a_replica_that_has_not_replayed_it(
        cluster: Cluster, database: str) -> None:
    async with writer_and_reader(cluster, database) as (writer, app, reader):
        key = await writer.create()
        await cluster.wait_replayed()
        await settled(app)
        assert (await reader.check(key.api_key)).allowed
        await cluster.replicas[0].pause_replay()  # the replica keeps the key from here on
        disable = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key.key.id, disabled=True),
                                            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]))
        await writer.keys.UpdateKey(disable, metadata=auth(writer.root))
        deadline = time.monotonic() + 2  # the NOTIFY reaches the reader within its bound (1 s)
        while (await reader.check(key.api_key)).code != authz_pb2.KEY_DISABLED:
            assert time.monotonic() < deadline, "the revocation never reached the reader"
            await asyncio.sleep(0.01)
        behind = source(app).fallbacks["behind"]
        end = time.monotonic() + 4 * TTL  # the entry expires and is read again, several times
        while time.monotonic() < end:
            assert (await reader.check(key.api_key)).code == authz_pb2.KEY_DISABLED
            await asyncio.sleep(0.02)
        assert source(app).fallbacks["behind"] > behind  # re-read, and the replica's answer set aside


async def test_a_key_created_a_moment_ago_is_allowed_through_a_lagging_replica(
        cluster: Cluster, database: str) -> None:
    async with writer_and_reader(cluster, database) as (writer, app, reader):
        await settled(app)
        await cluster.replicas[0].pause_replay()
        for _ in range(10):
            key = await writer.create()
            assert (await reader.check(key.api_key)).allowed  # at once: before or after its NOTIFY
        assert source(app).replica_reads == 0  # the replica never had any of them


@asynccontextmanager
async def replicated(cluster: Cluster, database: str) -> AsyncIterator[Replicated]:
    settings = DatabaseSettings(lookup_timeout=LOOKUP_TIMEOUT)
    primary = await Store.connect(cluster.primary.url(database), settings)
    replica = await Store.connect(cluster.replicas[0].url(database), settings, min_size=0, name="replica")
    try:
        yield Replicated(primary, replica)
    finally:
        await replica.close()
        await primary.close()


class Guard:
    """A ReplayGuard that says what the test wants."""

    def __init__(self, floor: int | None, vouches: bool) -> None:
        self._floor, self._vouches = floor, vouches

    def floor(self) -> int | None:
        return self._floor

    def vouches(self, digest: bytes) -> bool:
        return self._vouches


async def insert_key(cluster: Cluster, database: str) -> bytes:
    """A key written on the primary, as another keygate would (no NOTIFY needed here); its digest."""
    secret = digest(os.urandom(16).hex())
    key_id = uuid.uuid4()
    await cluster.primary.execute(
        "WITH k AS (INSERT INTO api_keys (id, name, workspace_id, permissions, display) "
        "VALUES ($1, 'k', 'ws1', '{}', 'k') RETURNING id) "
        "INSERT INTO key_secrets (digest, key_id) SELECT $2, id FROM k", key_id, secret, database=database)
    return secret


async def test_a_not_found_from_the_replica_is_confirmed_on_the_primary_unless_vouched_for(
        cluster: Cluster, database: str) -> None:
    async with replicated(cluster, database) as source:
        await cluster.replicas[0].pause_replay()
        secret = await insert_key(cluster, database)
        source.follow(Guard(floor=0, vouches=False))  # the replica is at the floor: its answers stand ...
        async with source.lookup() as lookups:
            assert await lookups.key_by_digest(secret) is not None  # ... but a not-found is confirmed
        assert source.fallbacks["absent"] == 1 and source.replica_reads == 0
        source.follow(Guard(floor=0, vouches=True))  # the complete filter of known keys held it
        async with source.lookup() as lookups:
            assert await lookups.key_by_digest(secret) is None  # the replica's answer stands
        assert source.replica_reads == 1
        source.follow(Guard(floor=2**62, vouches=True))  # a change the replica has not replayed
        async with source.lookup() as lookups:
            assert await lookups.key_by_digest(secret) is not None
        assert source.fallbacks["behind"] == 1
        source.follow(Guard(floor=None, vouches=True))  # a change not yet settled by a ping
        async with source.lookup() as lookups:
            assert await lookups.key_by_digest(secret) is not None
        assert source.fallbacks["unsettled"] == 1


async def lookup_seconds(source: Replicated, secret: bytes) -> float:
    started = time.monotonic()
    async with source.lookup() as lookups:
        assert await lookups.key_by_digest(secret) is not None
    return time.monotonic() - started


async def test_a_replica_down_or_hung_costs_at_most_half_a_lookup_bound_once(
        cluster: Cluster, database: str) -> None:
    replica = cluster.replicas[0]
    async with replicated(cluster, database) as source:
        secret = await insert_key(cluster, database)
        await cluster.wait_replayed()
        source.follow(Guard(floor=0, vouches=True))
        assert await lookup_seconds(source, secret) < LOOKUP_TIMEOUT and source.replica_reads == 1

        with stopped(replica.pids()):  # hung: connections open, nothing answers
            first = await lookup_seconds(source, secret)
            then = await lookup_seconds(source, secret)
            assert not source.replica.reachable and source.fallbacks["unreachable"] == 2
        assert first < LOOKUP_TIMEOUT and then < 0.1 * LOOKUP_TIMEOUT  # skipped at once once known
        await until(lambda: source.replica.reachable)  # the background probe gets through again

        await replica.stop()  # down: connections refused
        try:
            assert await lookup_seconds(source, secret) < LOOKUP_TIMEOUT
            assert not source.replica.reachable
        finally:
            await replica.start()
        await until(lambda: source.replica.reachable)
        reads = source.replica_reads
        await lookup_seconds(source, secret)
        assert source.replica_reads == reads + 1


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "did not happen in time"
        await asyncio.sleep(0.05)


async def test_metrics_count_replica_reads_and_fallbacks_without_per_key_labels(
        cluster: Cluster, database: str) -> None:
    settings = replace(reading_settings(cluster, database), metrics="127.0.0.1:0")
    async with serving(settings, cluster.primary.url(database)) as (app, client):
        key = await client.create()
        await cluster.wait_replayed()
        await settled(app)
        assert (await client.check(key.api_key)).allowed
        assert app.metrics is not None
        snapshot = app.metrics.snapshot()
        assert snapshot.counters[("keygate_replica_reads", ())] >= 1
        assert {labels for name, labels in snapshot.counters if name == "keygate_replica_fallbacks"} == {
            ("unsettled",), ("behind",), ("absent",), ("unreachable",), ("error",)}
        assert snapshot.gauges[("keygate_replica_unreachable", ())] == 0
