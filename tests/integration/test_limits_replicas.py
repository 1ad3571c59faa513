"""Limits that hold across every worker and replica: real `keygate serve` processes on one database.

- 2 servers x 2 workers, a key limited to N per 1 s window hammered at over 10 x N: admitted <= N x 1.05
  in every window (counted by the window each answer reports); a key with credits hammered at the same
  time: never more admitted than it had, and the store never below zero.
- A restart loses no consumed credit: after both servers stop (giving back their leases' unused part)
  the store holds exactly what was not admitted, and a restarted server goes on from there.
- The database going away: closed (the default) answers UNAVAILABLE for a limited key; open admits a
  rate-limited key uncounted; credits fail closed either way.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import duration_pb2

from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2

from .private_postgres import PrivatePostgres, on_private_postgres
from .processes import Served, assert_no_failures, bootstrap, connect, start, stop

N = 20  # the rate limit, per 1 s window
SECONDS = 4.0  # of hammering
CREDITS = 400
CHANNELS = 8  # connections per server: the kernel spreads connections (not calls) over its workers
LOOPS = 48  # Checks in flight at once, over every connection


def per_second(n: int) -> keys_pb2.RateLimit:
    return keys_pb2.RateLimit(name="per-second", limit=n, window=duration_pb2.Duration(seconds=1))


def channels(servers: list[Served]) -> list[grpc.aio.Channel]:
    # A local subchannel pool each: channels to one target otherwise share one connection.
    return [grpc.aio.insecure_channel(s.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for s in servers for _ in range(CHANNELS)]


async def hammer(servers: list[Served], keys: list[str], seconds: float) -> list[tuple[str, authz_pb2.CheckResponse]]:
    """LOOPS concurrent loops, Checking `keys` in turn over every server's connections, for `seconds`."""
    opened = channels(servers)
    stubs = [authz_pb2_grpc.AuthzServiceStub(c) for c in opened]
    answers: list[tuple[str, authz_pb2.CheckResponse]] = []
    deadline = time.monotonic() + seconds

    async def loop(i: int) -> None:
        n = i
        while time.monotonic() < deadline:
            key = keys[n % len(keys)]
            stub = stubs[n % len(stubs)]
            answers.append((key, await stub.Check(authz_pb2.CheckRequest(api_key=key, action="chatflows:view"),
                                                  timeout=10)))
            n += 1

    try:
        await asyncio.gather(*(loop(i) for i in range(LOOPS)))
    finally:
        for channel in opened:
            await channel.close()
    return answers


async def stored_credits(url: str, key_id: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT remaining FROM key_credits WHERE key_id = $1::uuid", key_id)
    finally:
        await conn.close()


async def test_a_limit_holds_across_two_servers_of_two_workers(database_url: str) -> None:
    root = bootstrap(database_url)
    servers = [start("--database-url", database_url, "--workers", "2") for _ in range(2)]
    try:
        client = connect(servers[0], root)
        limited = await client.create(rate_limits=[per_second(N)])
        paid = await client.create(credits=keys_pb2.Credits(remaining=CREDITS))
        await client.channel.close()

        answers = await hammer(servers, [limited.api_key] * 3 + [paid.api_key], SECONDS)

        by_window: dict[int, list[bool]] = collections.defaultdict(list)
        for key, answer in answers:
            if key == limited.api_key:
                assert answer.code in (authz_pb2.OK, authz_pb2.RATE_LIMITED), answer
                assert answer.HasField("rate_limit"), answer
                by_window[answer.rate_limit.reset_time.seconds].append(answer.allowed)
        full = sorted(by_window)[1:-1]  # the first and last windows were hammered only in part
        admitted = {w: sum(by_window[w]) for w in sorted(by_window)}
        asked = {w: len(by_window[w]) for w in full}
        print(f"\nrate limit {N}/s over 2 servers x 2 workers: admitted per window {admitted}, asked {asked}")
        assert all(n <= N * 1.05 for n in admitted.values()), admitted
        assert sum(asked.values()) >= 10 * N * len(full), asked  # hammered at 10 x N or more
        assert all(admitted[w] >= N // 2 for w in full), admitted  # leases do not strand the budget

        spent = sum(1 for key, a in answers if key == paid.api_key and a.allowed)
        refused = {a.code for key, a in answers if key == paid.api_key and not a.allowed}
        assert refused <= {authz_pb2.USAGE_EXCEEDED}
        assert spent == CREDITS  # asked far more often: every credit is used, none twice
        assert await stored_credits(database_url, paid.key.id) == 0
    finally:
        logs = [stop(s) for s in servers]
    for log in logs:
        assert_no_failures(log)


async def test_a_restart_loses_no_consumed_credit(database_url: str) -> None:
    """Both servers stop mid-way (SIGTERM gives back the leases' unused part): the store holds exactly
    the credits not admitted; a restarted server goes on from there."""
    root = bootstrap(database_url)
    servers = [start("--database-url", database_url, "--workers", "2") for _ in range(2)]
    client = connect(servers[0], root)
    paid = await client.create(credits=keys_pb2.Credits(remaining=10_000))
    await client.channel.close()
    answers = await hammer(servers, [paid.api_key], 1.0)
    spent = sum(a.allowed for _, a in answers)
    assert 0 < spent < 10_000
    assert await stored_credits(database_url, paid.key.id) <= 10_000 - spent  # leased counts as spent
    for served in servers:
        assert_no_failures(stop(served))
    assert await stored_credits(database_url, paid.key.id) == 10_000 - spent

    again = start("--database-url", database_url, "--workers", "1")
    try:
        client = connect(again, root)
        answer = await client.check(paid.api_key)
        assert answer.allowed and answer.credits_remaining == 10_000 - spent - 1
        await client.channel.close()
    finally:
        assert_no_failures(stop(again))


def test_the_database_going_away_fails_as_configured(pg_dirs: Callable[[str], Path]) -> None:
    on_private_postgres(pg_dirs, "limits-outage", database_going_away)


async def outcome(call: object) -> str:
    try:
        answer = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return authz_pb2.DecisionCode.Name(answer.code)


async def database_going_away(pg: PrivatePostgres) -> None:
    root = bootstrap(pg.url)
    closed = start("--database-url", pg.url, "--workers", "1")
    opened = start("--database-url", pg.url, "--workers", "1", env={"KEYGATE_RATE_LIMIT_OUTAGE": "open"})
    clients = [connect(s, root) for s in (closed, opened)]
    try:
        limited = await clients[0].create(rate_limits=[per_second(1000)])
        paid = await clients[0].create(credits=keys_pb2.Credits(remaining=10))  # a lease of 1: each Check refills
        for client in clients:  # both keys cached everywhere: only the meter needs the database
            for key in (limited, paid):
                assert (await client.check(key.api_key)).allowed
        await pg.stop()
        await asyncio.sleep(1.05)  # the next window: every rate lease in hand has lapsed
        for client, rate_limited in ((clients[0], "UNAVAILABLE"), (clients[1], "OK")):
            assert await outcome(client.check(limited.api_key)) == rate_limited
            assert await outcome(client.check(paid.api_key)) == "UNAVAILABLE"
        await pg.start()
        deadline = time.monotonic() + 10
        while await outcome(clients[0].check(limited.api_key)) != "OK":
            assert time.monotonic() < deadline, "no recovery after the database came back"
            await asyncio.sleep(0.1)
        assert await outcome(clients[0].check(paid.api_key)) == "OK"
    finally:
        for client in clients:
            await client.channel.close()
        for served in (closed, opened):
            stop(served)
