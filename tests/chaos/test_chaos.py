"""The chaos suite: each fault injected for real under Check and admin load (harness.py), with the same
fixed assertions: zero false allows, zero acknowledged writes lost, recovery within RECOVERY seconds.

`make test` runs the faults in SHORT, held briefly; `make chaos` (KEYGATE_CHAOS=full) runs every fault,
held longer, and prints the table.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from google.protobuf import duration_pb2

from keygate.v1 import keys_pb2

from ..e2e.conftest import Upstream, running_envoy
from ..integration.load import FORMAT, disable
from ..integration.private_postgres import PrivatePostgres, postgres_processes, stopped
from ..integration.processes import connect, the_listener, worker_pids
from ..integration.support import Client
from ..pgcluster import Cluster
from .harness import UNAVAILABLE, Extra, HttpLoad, Load, Scene, assert_holds, run, scene, start_b

FULL = os.environ.get("KEYGATE_CHAOS") == "full"
SHORT = {"listener terminated", "postgres hung", "worker killed", "primary failed over"}
HOLD = 3.0 if FULL else 1.5  # seconds a fault lasts before its repair
B = "keygate-chaos-b"
_numbers = itertools.count()


def long_only(fault: str) -> None:
    if not FULL and fault not in SHORT:
        pytest.skip("the whole chaos suite runs with `make chaos` (KEYGATE_CHAOS=full)")


@pytest.fixture(scope="module")
def pg(pg_dirs: Callable[[str], Path]) -> Iterator[PrivatePostgres]:
    """A PostgreSQL of the suite's own: the faults stop, kill and hang it."""
    server = PrivatePostgres(pg_dirs("chaos") / "data")
    yield server
    asyncio.run(server.remove())


async def fresh(pg: PrivatePostgres) -> str:
    """A new empty database on `pg` (keygate's bootstrap migrates it)."""
    name = f"chaos_{next(_numbers)}"
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.server.get_uri(name)


# --- the faults on one PostgreSQL: each injects, holds, and repairs ----------------------------


async def postgres_killed(pg: PrivatePostgres, _: Scene) -> None:
    for pid in postgres_processes(pg):
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(HOLD)
    await pg.start()


async def postgres_hung(pg: PrivatePostgres, _: Scene) -> None:
    with stopped(postgres_processes(pg)):
        await asyncio.sleep(HOLD)


async def postgres_restarted(pg: PrivatePostgres, _: Scene) -> None:
    await pg.stop()
    await asyncio.sleep(HOLD)
    await pg.start()


async def listener_terminated(pg: PrivatePostgres, scene_: Scene) -> None:
    admin = await asyncpg.connect(pg.url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", await the_listener(admin, scene_.name))
    finally:
        await admin.close()
    await asyncio.sleep(HOLD)


async def listener_stalled(pg: PrivatePostgres, scene_: Scene) -> None:
    admin = await asyncpg.connect(pg.url)
    try:
        listener = await the_listener(admin, scene_.name)
    finally:
        await admin.close()
    with stopped([listener]):
        await asyncio.sleep(HOLD)


async def worker_killed(_: PrivatePostgres, scene_: Scene) -> None:
    os.kill(min(worker_pids(scene_.b.process.pid)), signal.SIGKILL)
    await asyncio.sleep(HOLD)


FAULTS: dict[str, Callable[[PrivatePostgres, Scene], Awaitable[None]]] = {
    "postgres killed": postgres_killed,
    "postgres hung": postgres_hung,
    "postgres restarted": postgres_restarted,
    "listener terminated": listener_terminated,
    "listener stalled": listener_stalled,
    "worker killed": worker_killed,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_fault_under_load_allows_nothing_revoked_and_loses_no_write(pg: PrivatePostgres, fault: str) -> None:
    long_only(fault)
    workers = 2 if fault == "worker killed" else 1
    async with scene(await fresh(pg), B, b_workers=workers) as scene_:
        row, running = await run(fault, scene_, lambda: FAULTS[fault](pg, scene_))
    # A killed worker takes the calls in flight on its connections with it (UNAVAILABLE: the client retries).
    assert_holds(row, running, cached_always_ok=fault != "worker killed")


# --- the limits engine lost: its leases live in PostgreSQL ------------------------------------

CREDITS = 200
RATE_LIMIT, WINDOW = 50, 1  # a limit of 50 Checks per 1 s window


async def test_the_limits_engine_lost_admits_no_more_than_the_limits(pg: PrivatePostgres) -> None:
    """The database killed while limited keys are under load, rate limits failing closed (the default):
    credits are never over-spent, and once the leases in hand have lapsed a rate-limited key is not
    admitted until the database is back."""
    fault = "limits engine lost"
    long_only(fault)
    down: list[float] = []

    async def limited(a: Client) -> dict[str, Extra]:
        paid = await a.create(credits=keys_pb2.Credits(remaining=CREDITS))
        rated = await a.create(rate_limits=[keys_pb2.RateLimit(
            name="second", limit=RATE_LIMIT, window=duration_pb2.Duration(seconds=WINDOW))])

        def overspent(running: Load) -> int:
            return max(0, sum(x.outcome == "OK" for x in running.answers["credits"]) - CREDITS)

        def admitted_while_down(running: Load) -> int:
            # Rate leases last one window: from the next but one window on, nothing is admitted.
            return sum(x.outcome == "OK" for x in running.answers["rate limited"]
                       if down and down[0] + 2 * WINDOW <= x.asked < down[1])

        return {"credits": Extra(paid.api_key, {"OK", "USAGE_EXCEEDED", UNAVAILABLE}, overspent),
                "rate limited": Extra(rated.api_key, {"OK", "RATE_LIMITED", UNAVAILABLE}, admitted_while_down)}

    async def killed(pg_: PrivatePostgres, scene_: Scene) -> None:
        down.append(time.monotonic())
        await postgres_killed(pg_, scene_)
        down.append(time.monotonic())

    async with scene(await fresh(pg), B) as scene_:
        row, running = await run(fault, scene_, lambda: killed(pg, scene_), extra=limited)
    assert_holds(row, running)
    assert UNAVAILABLE in running.between("rate limited", down[0] + 2 * WINDOW, down[1])


# --- the primary failed over ------------------------------------------------------------------


async def test_a_failover_under_load_allows_nothing_revoked_and_loses_no_acknowledged_write(
        pg_dirs: Callable[[str], Path]) -> None:
    """Primary + one synchronous streaming replica; keygate on the multi-host URL with
    target_session_attrs=read-write. The primary is SIGKILLed and the replica promoted: keygate finds the
    new primary by itself (pool and change listener), and writes resume within RECOVERY seconds."""
    fault = "primary failed over"
    long_only(fault)
    async with Cluster.running(pg_dirs("chaos-cluster"), replicas=1, synchronous=True) as cluster:
        await cluster.create_database("chaos")
        async with scene(cluster.url("chaos"), B) as scene_:
            async def failover() -> None:
                await cluster.failover()

            row, running = await run(fault, scene_, failover, verify_url=lambda: cluster.primary.url("chaos"))
    assert_holds(row, running)


# --- keygate killed behind Envoy ----------------------------------------------------------------


async def test_keygate_killed_behind_envoy_lets_no_request_through(pg: PrivatePostgres, upstream: Upstream) -> None:
    """B is Envoy's ext_authz (the shipped envoy.yaml: failure_mode_allow false). B is SIGKILLed under HTTP
    load through Envoy as well as the gRPC load, and started again: while it is down Envoy lets no request
    through (it answers 503), and a revoked or unknown key is never let through."""
    fault = "keygate killed behind Envoy"
    long_only(fault)
    with running_envoy(upstream) as envoy:
        async with scene(await fresh(pg), B, b_address=f"127.0.0.1:{envoy.keygate_port}") as scene_:
            down: list[float] = []

            async def killed() -> None:
                scene_.b.process.kill()
                scene_.b.process.wait()
                scene_.b.log_path.unlink()
                down.append(time.monotonic())
                await asyncio.sleep(HOLD)
                down.append(time.monotonic())
                scene_.b = start_b(scene_.url, scene_.name, address=scene_.b.address)

            admin = connect(scene_.a, scene_.root)
            try:
                live, revoked = await admin.create(), await admin.create()
                await disable(admin, revoked)()
            finally:
                await admin.channel.close()
            http = HttpLoad(envoy.port, {"live": live.api_key, "revoked": revoked.api_key,
                                         "unknown": FORMAT.generate()})
            async with http.running():
                row, running = await run(fault, scene_, killed)
    let_through = (http.count("live", 200, down[0], down[1]) + http.count("revoked", 200)
                   + http.count("unknown", 200))
    row.false_allows += let_through  # the row in the table too
    assert let_through == 0, f"Envoy let {let_through} requests through"
    assert http.statuses("live", down[0], down[1]) == {503}
    assert http.statuses("live", down[1] + (row.recovery or 0) + 0.5) == {200}
    assert_holds(row, running, cached_always_ok=False)  # B's own gRPC callers lose it too while it is down
