"""The test cluster itself (tests/pgcluster.py): standbys stream, replay pauses, a failover promotes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg

from tests.pgcluster import Cluster


async def test_a_standby_streams_pauses_and_takes_over(pg_dirs: Callable[[str], Path]) -> None:
    async with Cluster.running(pg_dirs("cluster"), replicas=1, synchronous=True) as cluster:
        replica = cluster.replicas[0]
        await cluster.primary.execute("CREATE TABLE t (n int)")
        await cluster.primary.execute("INSERT INTO t VALUES (1)")
        await cluster.wait_replayed()
        assert await replica.execute("SELECT count(*) FROM t") == 1
        assert await replica.in_recovery()

        await replica.pause_replay()
        await cluster.primary.execute("INSERT INTO t VALUES (2)")  # synchronous: flushed there, not replayed
        assert await replica.execute("SELECT count(*) FROM t") == 1
        await replica.resume_replay()
        await cluster.wait_replayed()
        assert await replica.execute("SELECT count(*) FROM t") == 2

        url = cluster.url()
        new = await cluster.failover()
        assert new is replica and cluster.primary is replica and not cluster.replicas
        conn = await asyncpg.connect(url, timeout=10)  # the multi-host URL finds the writable node
        try:
            assert await conn.fetchval("INSERT INTO t VALUES (3) RETURNING n") == 3
            assert await conn.fetchval("SELECT count(*) FROM t") == 3
            assert await conn.fetchval("SHOW port") == str(new.port)
        finally:
            await conn.close()
