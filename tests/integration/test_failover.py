"""A primary that stops accepting writes: demoted, or fenced with default_transaction_read_only as some
failover managers do before a switchover. Its connections stay open, so nothing reports them lost: the
first write refused as read-only must fail closed (UNAVAILABLE, never INTERNAL), and every pooled
connection opened before must be replaced, so that the URL's target_session_attrs=read-write picks the
writable server again (asyncpg refuses a server that reports default_transaction_read_only=on, so the
store stays unreachable until there is one). (The whole failover, under load: tests/chaos, `primary failed over`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from keygate.domain.errors import Unavailable
from keygate.domain.permissions import Catalog
from keygate.domain.records import AuditEvent
from keygate.store.postgres import PROBE_INTERVAL_SECONDS, DatabaseSettings, Store

from ..pgcluster import Cluster
from .private_postgres import PrivatePostgres, on_private_postgres, stopped

POOL = 3
NAME = "keygate-fenced"
CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
EVENT = AuditEvent(action="test.write", outcome="OK", workspace_id="ws1")


async def write(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.audit(EVENT)


async def backends(store: Store, pg: PrivatePostgres) -> set[int]:
    """The server pids of the pool's POOL connections, each acquired (an expired one is replaced then)."""
    async with contextlib.AsyncExitStack() as held:
        for _ in range(POOL):
            await held.enter_async_context(store.read())
        conn = await asyncpg.connect(pg.url)
        try:
            return {r["pid"] for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1", NAME)}
        finally:
            await conn.close()


async def refused(store: Store) -> None:
    """Write until a write is refused as read-only (UNAVAILABLE): each backend applies the reloaded setting
    on its own, at some point after the reload."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            await write(store)
        except Unavailable as exc:
            assert "ReadOnlySQLTransactionError" in str(exc)
            return
        assert asyncio.get_running_loop().time() < deadline, "writes still accepted 5 s after the fence"
        await asyncio.sleep(0.05)


async def fenced(pg: PrivatePostgres) -> None:
    store = await Store.connect(f"{pg.url}&target_session_attrs=read-write&application_name={NAME}",
                                min_size=POOL, max_size=POOL)
    try:
        await store.migrate(Catalog.build())
        before = await backends(store, pg)
        await fence(pg, True)
        await refused(store)
        assert store.errors["connection_lost"] == 1
        await asyncio.sleep(2 * PROBE_INTERVAL_SECONDS)
        assert not store.reachable, "the probe took a read-only server for the primary"
        await fence(pg, False)
        deadline = asyncio.get_running_loop().time() + 5
        while not store.reachable:
            assert asyncio.get_running_loop().time() < deadline, "the store did not find a writable server again"
            await asyncio.sleep(PROBE_INTERVAL_SECONDS / 5)
        await write(store)
        assert not before & await backends(store, pg), "a connection to the read-only server was kept"
    finally:
        await store.close()


async def fence(pg: PrivatePostgres, on: bool) -> None:
    """default_transaction_read_only for every session, the open ones included (a reload applies it)."""
    conn = await asyncpg.connect(pg.url, server_settings={"default_transaction_read_only": "off"})
    try:
        await conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


def test_a_write_on_a_read_only_primary_is_unavailable_and_its_connections_are_replaced(
        pg_dirs: Callable[[str], Path]) -> None:
    on_private_postgres(pg_dirs, "fenced", fenced)


async def test_a_standby_refuses_the_change_listener_which_leaves_no_connection_behind(
        pg_dirs: Callable[[str], Path]) -> None:
    """Reached without target_session_attrs, a standby refuses LISTEN: the listener retries every few
    seconds, so each refused connection must be closed at once, not left for the standby to count."""
    async with Cluster.running(pg_dirs("standby"), replicas=1) as cluster:
        await cluster.create_database("keygate")
        standby = cluster.replicas[0]
        store = await Store.connect(f"{standby.url('keygate')}?application_name={NAME}", min_size=1, max_size=1)
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always", ResourceWarning)
                for _ in range(3):
                    with pytest.raises(Unavailable, match="ReadOnlySQLTransactionError"):
                        await store.listen(lambda _payload: None, lambda: None)
                gc.collect()
            # Closed by keygate, not left to the garbage collector (which warns, and may run late).
            assert not [w for w in warned if "unclosed connection" in str(w.message)]
            deadline = asyncio.get_running_loop().time() + 5
            while (left := await standby.execute(CONNECTIONS, NAME)) != 1:  # the pool's one connection
                assert asyncio.get_running_loop().time() < deadline, f"{left} connections left on the standby"
                await asyncio.sleep(0.05)
        finally:
            await store.close()


@pytest.mark.parametrize("synchronous", [False, True], ids=["asynchronous", "synchronous"])
async def test_a_failover_keeps_every_acknowledged_write_only_with_a_synchronous_standby(
        pg_dirs: Callable[[str], Path], synchronous: bool) -> None:
    """Why the README asks for synchronous replication: the primary's WAL sender stalls (a slow network),
    a write is made, the primary dies and the standby is promoted. Asynchronous: the write was acknowledged
    and is lost. Synchronous: it was never acknowledged (it waited for the standby until the statement
    bound, then UNAVAILABLE), so nothing keygate acknowledged is lost."""
    async with Cluster.running(pg_dirs("lost-write"), replicas=1, synchronous=synchronous) as cluster:
        await cluster.create_database("keygate")
        store = await Store.connect(cluster.url("keygate"), DatabaseSettings(statement_timeout=1.0))
        try:
            sender = await cluster.primary.execute("SELECT pid FROM pg_stat_replication")
            assert isinstance(sender, int)
            with stopped([sender]):
                try:
                    await write(store)
                    acknowledged = True
                except Unavailable:
                    acknowledged = False
                await cluster.failover()
        finally:
            await store.close()
        kept = await cluster.primary.execute("SELECT count(*) FROM audit_events WHERE action = $1", EVENT.action,
                                             database="keygate")
    assert (acknowledged, kept) == ((False, 0) if synchronous else (True, 0))
