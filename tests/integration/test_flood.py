"""A flood of made-up keys over gRPC, against a real `keygate serve` process: how many reach the database.

250 concurrent callers each send distinct made-up keys, well-formed and with a valid checksum, so
each one passes every check before the lookup. The database's own statistics count the lookups:
seq_scan + idx_scan of key_secrets, read after the server has stopped (a backend reports them when
it exits). The count is checked against the design (the filter of known keys answers alone beyond
`unknown_key_lookups` a second), whatever the flood's speed: the share that reaches the database is that
budget over the flood's rate (the README quotes it with the rate it was measured at).

One flood is paused mid-way (SIGSTOP, as a VM is paused or a loop is starved): every deadline of the
change listener passes while nothing runs, yet its connection and the filter of known keys hold, so
the made-up keys are still refused as not found, never UNAVAILABLE, and stay within the budget.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from keygate.cache.keys import CacheSettings
from keygate.domain.keys import KeyFormat
from keygate.store.postgres import Store
from keygate.v1 import authz_pb2, authz_pb2_grpc

from .processes import Served, bootstrap, start, stop

CALLERS = 250
PER_CALLER = 80  # made-up keys each: 20,000 in all
FLOOD = CALLERS * PER_CALLER
CHANNELS = 4  # callers share a few HTTP/2 connections, as a fleet of clients would
RATE = CacheSettings().unknown_key_lookups
STARTUP_SCANS = 4  # the server's own scans of key_secrets when it loads the filter of known keys
FORMAT = KeyFormat()

SCANS = "SELECT seq_scan + COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'key_secrets'"
OTHER_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


@pytest.fixture
async def stats(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def scans(conn: asyncpg.Connection) -> int:
    """key_secrets scans reported so far, once every other backend of the database has exited."""
    started = time.monotonic()
    while await conn.fetchval(OTHER_BACKENDS):
        assert time.monotonic() - started < 10, "the server's connections did not close"
        await asyncio.sleep(0.05)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(SCANS))


async def test_each_lookup_of_an_unknown_key_counts_as_one_scan(database_url: str, stats: asyncpg.Connection) -> None:
    """The yardstick of the test below: the server's lookup query, prepared and run ten times (past
    the point where PostgreSQL switches to a generic plan), is ten scans of key_secrets."""
    bootstrap(database_url)  # one stored key, as in the flood
    before = await scans(stats)
    store = await Store.connect(database_url)
    try:
        async with store.lookup() as tx:
            for _ in range(10):
                assert await tx.key_by_digest(os.urandom(32)) is None
    finally:
        await store.close()
    assert await scans(stats) - before == 10


async def pause(served: Served, after: float, seconds: float) -> None:
    await asyncio.sleep(after)
    os.kill(served.process.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(served.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("paused", [0.0, 2.0], ids=["steady", "paused"])
async def test_a_flood_of_made_up_keys_over_grpc_mostly_stays_out_of_the_database(
        database_url: str, stats: asyncpg.Connection, capsys: pytest.CaptureFixture[str], paused: float) -> None:
    bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1")
    try:
        started = time.monotonic()
        while "change_listener_up" not in served.logs():  # the filter of known keys is loaded
            assert time.monotonic() - started < 10, served.logs()
            await asyncio.sleep(0.05)
        before = await stats.fetchval(SCANS)  # the startup scans may still be unreported: counted in the flood
        channels = [grpc.aio.insecure_channel(served.address) for _ in range(CHANNELS)]
        answers: dict[str, int] = {}

        async def caller(number: int) -> None:
            stub = authz_pb2_grpc.AuthzServiceStub(channels[number % CHANNELS])
            for _ in range(PER_CALLER):
                try:
                    response = await stub.Check(
                        authz_pb2.CheckRequest(api_key=FORMAT.generate(), action="chatflows:view"), timeout=30)
                    code = authz_pb2.DecisionCode.Name(response.code)
                except grpc.aio.AioRpcError as error:  # counted, so a failure shows every answer's share
                    code = error.code().name
                answers[code] = answers.get(code, 0) + 1

        try:
            flooding = time.monotonic()
            pauses = [pause(served, 3.0, paused)] if paused else []
            await asyncio.gather(*pauses, *(caller(n) for n in range(CALLERS)))
            elapsed = time.monotonic() - flooding
        finally:
            for channel in channels:
                await channel.close()
        logs = served.logs()
    finally:
        stop(served)
    lookups = await scans(stats) - before

    share = lookups / FLOOD
    kind = f"paused {paused:.0f}s" if paused else "steady"
    line = (f"flood over gRPC ({kind}): {FLOOD} made-up keys from {CALLERS} callers in {elapsed:.1f}s "
            f"({FLOOD / elapsed:.0f}/s), {lookups} reached the database ({share:.2%})")
    warnings = [entry for entry in logs.splitlines() if '"level":"info"' not in entry][:20]
    lost = "change_listener_down" in logs or "change_listener_lost" in logs
    if lost and not paused:
        line += f"; the change listener's connection was lost mid-flood: {answers}"
    with capsys.disabled():
        print(f"\n{line}", end="")
    assert set(answers) <= {"KEY_NOT_FOUND", "UNAVAILABLE"}, (answers, warnings)  # every made-up key refused
    if lost and not paused:
        # README (Floods of made-up keys): without its listener the filter of known keys is incomplete, so
        # made-up keys go to the database until it is reloaded, and past what the pool answers in time they
        # are UNAVAILABLE (fail closed). Seen once in CI on a loaded machine (540 of 20,000); the paused
        # flood below is the case this process can hold on its own.
        return
    assert answers == {"KEY_NOT_FOUND": FLOOD} and not lost, (answers, warnings)
    assert lookups <= RATE * (elapsed + 1) + STARTUP_SCANS, line  # the budget, its one-second burst, the startup
