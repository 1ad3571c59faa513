"""`python -m bench.limits_engine [--quick]`: what deciding a rate limit costs, by engine.

1. PostgreSQL lease: one `store.limits.grant_rate` statement (the atomic UPDATE ... RETURNING a server
   runs when its lease of a window's budget runs out), on a throw-away PostgreSQL;
2. Redis/Valkey counter: INCRBY + EXPIRE in one pipeline round trip (what envoyproxy/ratelimit does per
   request), on a throw-away `redis-server` (Debian's package; skipped if it is not installed);
3. in memory: `LimitsMeter.charge` deciding from a lease in hand (the common case), per request;
4. a whole Check through a real `keygate serve` (one worker), one call at a time over one channel, for a
   key without limits, a rate-limited key and a key with credits (limits never reached), interleaved.

Each round trip is timed alone, one at a time (p50/p99 over many), so the figures compare engines, not
load. With leases of 1/16 of the limit, a limited key pays the PostgreSQL round trip on about one
request in (limit / 16) per process and the in-memory cost on every request; a Redis counter would
cost its round trip on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import duration_pb2

from keygate.admin import KeyAdmin
from keygate.config import Settings
from keygate.domain.decision import Credential
from keygate.domain.evaluators import CheckItem, Question
from keygate.domain.limits import RateLimit, limits_of, window_start_ms
from keygate.domain.resources import Scope, Target
from keygate.limits.engine import LimitsMeter
from keygate.store import limits as sql
from keygate.store.postgres import Store
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2, keys_pb2_grpc

from . import postgres, servers
from .stats import median

LIMIT = RateLimit("bench", 10**9, timedelta(hours=1))  # never reached: every grant is a full lease


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _timed(call: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    """p50, p99 in microseconds of `n` calls one at a time (after n/10 unmeasured)."""
    for _ in range(max(1, n // 10)):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return _percentiles(samples)


async def postgres_lease(url: str, n: int) -> tuple[float, float]:
    conn = await asyncpg.connect(url)
    try:
        key_id = uuid.uuid4()
        await conn.execute("INSERT INTO api_keys (id, workspace_id, name, permissions, display) "
                           "VALUES ($1, 'bench', 'bench', '{}', 'bench')", key_id)
        start = window_start_ms(int(time.time() * 1000), LIMIT.window_ms)
        return await _timed(lambda: sql.grant_rate(conn, key_id, LIMIT, start, 1), n)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def redis_counter(n: int) -> tuple[float, float] | None:
    """None when redis-server or the `redis` client (the dev extra) is not installed."""
    server = shutil.which("redis-server")
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return None
    if server is None:
        return None
    port = _free_port()
    process = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = aioredis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

        async def incr() -> object:
            pipe = client.pipeline(transaction=False)
            pipe.incrby("keygate_key_per_hour_bench", 1)
            pipe.expire("keygate_key_per_hour_bench", 3600)
            return await pipe.execute()

        return await _timed(incr, n)
    finally:
        await client.aclose()
        process.terminate()
        process.wait(timeout=10)


async def in_memory(url: str, n: int) -> tuple[float, float]:
    """`charge` from a lease in hand: each lease is 1/16 of a limit of 10^9, so no refill is measured."""
    store = await Store.connect(url)
    try:
        meter = LimitsMeter(store)
        credential = Credential(uuid.uuid4(), "bench", "bench", frozenset(), Scope(()), None, False,
                                limits=limits_of((LIMIT,), None))
        async with store.transaction() as tx:
            await tx.connection.execute("INSERT INTO api_keys (id, workspace_id, name, permissions, display) "
                                        "VALUES ($1, 'bench', 'bench', '{}', 'bench')", credential.key_id)
        question = Question(CheckItem("", "predictions:create"), Target("", "predictions:create", ()), "bench",
                            datetime.now(UTC))
        await meter.charge(credential, question)  # the first lease
        return await _timed(lambda: meter.charge(credential, question), n)
    finally:
        await store.close()


def _create(stub: keys_pb2_grpc.KeyServiceStub, root: str, **fields: object) -> str:
    request = keys_pb2.CreateKeyRequest(name="bench", workspace_id="bench", permissions=["chatflows:view"],
                                        **fields)  # type: ignore[arg-type]
    return str(stub.CreateKey(request, metadata=(("authorization", f"Bearer {root}"),)).api_key)


def checks_through_a_server(url: str, n: int, logdir: Path) -> dict[str, tuple[float, float]]:
    """p50/p99 µs of a Check, one at a time, by kind of key, the kinds interleaved call by call."""
    root = asyncio.run(root_key(url))
    probe = authz_pb2.CheckRequest(api_key=root, action="chatflows:view")
    with servers.running(servers.start_keygate(url, 1, True, logdir, "limits"), probe) as server, \
            grpc.insecure_channel(server.target) as channel:
        keys = keys_pb2_grpc.KeyServiceStub(channel)
        window = duration_pb2.Duration(seconds=3600)
        kinds = {
            "Check, key without limits": _create(keys, root),
            "Check, rate-limited key": _create(keys, root, rate_limits=[
                keys_pb2.RateLimit(name="bench", limit=10**9, window=window)]),
            "Check, key with credits": _create(keys, root, credits=keys_pb2.Credits(remaining=10**12)),
        }
        check = authz_pb2_grpc.AuthzServiceStub(channel).Check
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        for i in range(n + n // 10):
            for name, key in kinds.items():
                request = authz_pb2.CheckRequest(api_key=key, action="chatflows:view")
                started = time.perf_counter()
                answer = check(request, timeout=10)
                took = (time.perf_counter() - started) * 1e6
                assert answer.allowed, answer
                if i >= n // 10:
                    samples[name].append(took)
    return {name: _percentiles(s) for name, s in samples.items()}


async def root_key(url: str) -> str:
    store = await Store.connect(url)
    try:
        settings = Settings()
        return (await KeyAdmin(store, settings.catalog(), settings.key_format()).create_root_key())[1]
    finally:
        await store.close()


async def measure(url: str, n: int) -> dict[str, tuple[float, float] | None]:
    return {
        "PostgreSQL lease (grant_rate)": await postgres_lease(url, n),
        "Redis INCRBY+EXPIRE (pipeline)": await redis_counter(n),
        "in memory (LimitsMeter.charge)": await in_memory(url, n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = (300, 1) if args.quick else (3000, args.rounds)
    with tempfile.TemporaryDirectory(prefix="keygate-bench-limits-") as root:
        with postgres.embedded(Path(root)) as pg:
            url = pg.create_database("bench_limits")
            results: list[dict[str, tuple[float, float] | None]] = []
            for _ in range(rounds):
                results.append({**asyncio.run(measure(url, n)), **checks_through_a_server(url, n, Path(root))})
    print(f"limits engines: one call at a time, {n} calls per round, median of {rounds} round(s); µs")
    print(f"{'engine':<34} {'p50':>9} {'p99':>9}")
    for name in results[0]:
        figures = [r[name] for r in results]
        if any(f is None for f in figures):
            print(f"{name:<34} {'(not installed: apt-get install redis-server; pip install redis)':>19}")
            continue
        p50 = median([f[0] for f in figures])  # type: ignore[index]
        p99 = median([f[1] for f in figures])  # type: ignore[index]
        print(f"{name:<34} {p50:>9.1f} {p99:>9.1f}")


if __name__ == "__main__":
    main()
