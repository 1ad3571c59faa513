"""Outages, against real `keygate serve` processes: the change listener's connection killed or stalled,
the whole database stopped and restarted, or hung, under Check load.

- Listener killed (pg_terminate_backend): the replica must give no stale answer beyond its cache
  TTL, also when it cannot reconnect for a while (the database refuses new connections), and
  changes propagate within a second again once it is back.
- Listener stalled (its backend SIGSTOPped): a silent listener is noticed within the one-second bound.
- Database hung (every PostgreSQL process SIGSTOPped, as a stuck disk or a partition looks): cached keys
  keep answering, anything else fails closed with UNAVAILABLE within the database bounds, and it recovers.
- Database stopped: a cached key keeps answering for at most TTL + outage grace, then fails closed
  with UNAVAILABLE; an unknown key is UNAVAILABLE from the start (never KEY_NOT_FOUND, never OK);
  KeyService calls are UNAVAILABLE. When PostgreSQL is back everything recovers by itself, and the
  process neither exits nor logs a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from keygate.store.postgres import PING
from keygate.v1 import keys_pb2

from .load import (
    BOUND,
    FORMAT,
    RPC_TIMEOUT,
    UNAVAILABLE,
    Load,
    check,
    delete,
    disable,
    eventually,
    load,
    outcome,
)
from .private_postgres import PrivatePostgres, on_private_postgres, postgres_processes, stopped
from .processes import Served, assert_no_failures, bootstrap, connect, finish, start, stop
from .processes import listener_pids as listener_backends
from .processes import the_listener as one_listener
from .support import Client, auth

LISTENER_TTL = 3.0  # B's cache TTL: well above BOUND, so a listener that never came back would show
REPLICA_B = "keygate-replica-b"


@dataclass
class Replicas:
    a: Served
    b: Served
    root: str
    url: str
    database: str  # its name
    admin_url: str  # another database of the same server, for ALTER DATABASE


@pytest.fixture(scope="module")
def replicas(postgres) -> Iterator[Replicas]:
    """A (mutations, default TTL) and B (Checks, named in pg_stat_activity, TTL 3 s) on one database."""
    url = asyncio.run(postgres.fresh_database())
    root = bootstrap(url)
    a = start("--database-url", url, "--workers", "1")
    b = start("--database-url", f"{url}&application_name={REPLICA_B}", "--workers", "1",
              env={"KEYGATE_CACHE_TTL": str(LISTENER_TTL)})
    yield Replicas(a, b, root, url, url.split("?")[0].rsplit("/", 1)[1], postgres.url())
    for served in (a, b):
        assert_no_failures(stop(served))


@pytest.fixture
async def clients(replicas: Replicas) -> AsyncIterator[tuple[Client, Client]]:
    a, b = connect(replicas.a, replicas.root), connect(replicas.b, replicas.root)
    yield a, b
    await a.channel.close()
    await b.channel.close()


@pytest.fixture
async def admin(replicas: Replicas) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(replicas.admin_url)
    yield conn
    await conn.execute(f'ALTER DATABASE "{replicas.database}" ALLOW_CONNECTIONS true')
    await conn.close()


async def listener_pids(admin: asyncpg.Connection) -> list[int]:
    return await listener_backends(admin, REPLICA_B)


async def the_listener(admin: asyncpg.Connection) -> int:
    return await one_listener(admin, REPLICA_B)


async def kill_listener(admin: asyncpg.Connection) -> None:
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", await the_listener(admin))


@pytest.mark.parametrize("kept_out", [False, True], ids=["killed", "killed-and-kept-out"])
async def test_a_killed_listener_gives_no_stale_answer_beyond_the_ttl_and_recovers(
        replicas: Replicas, clients: tuple[Client, Client], admin: asyncpg.Connection, kept_out: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`kept_out`: the database refuses new connections for longer than the TTL, so the listener stays
    down (B's pool keeps the connections it has) while the key is deleted through A."""
    a, b = clients
    key = await a.create()
    await eventually(check(b, key.api_key), "OK", BOUND)
    logged_before = replicas.b.logs().count("change_listener_up")

    async with load(b) as running:
        running.add("key", lambda: key.api_key)
        await asyncio.sleep(0.2)
        if kept_out:
            await admin.execute(f'ALTER DATABASE "{replicas.database}" ALLOW_CONNECTIONS false')
        await kill_listener(admin)
        await asyncio.sleep(0.3)  # B reads the key again after losing the listener, and caches it
        await delete(a, key)()
        deleted = time.monotonic()
        await asyncio.sleep(LISTENER_TTL + 0.5)
        if kept_out:
            assert await listener_pids(admin) == [], "B's listener came back although connections were refused"
            await admin.execute(f'ALTER DATABASE "{replicas.database}" ALLOW_CONNECTIONS true')

    stale = running.last("key", "OK") - deleted
    with capsys.disabled():
        print(f"\nlistener {'kept out' if kept_out else 'killed'}: last stale OK {stale:.3f}s after the delete "
              f"(TTL {LISTENER_TTL}s)", end="")
    # While the database refuses new connections, a Check that needed one may fail closed (UNAVAILABLE),
    # also after the TTL; what must never happen is a stale OK.
    closed = {"UNAVAILABLE"} if kept_out else set()
    after_ttl = running.between("key", deleted + LISTENER_TTL)
    assert "KEY_NOT_FOUND" in after_ttl and after_ttl <= {"KEY_NOT_FOUND", *closed}, f"stale {stale:.3f}s"
    assert running.between("key", 0) <= {"OK", "KEY_NOT_FOUND", *closed}

    # recovery: the listener reconnects by itself, and changes propagate within the bound again
    started = time.monotonic()
    while not await listener_pids(admin):
        assert time.monotonic() - started < 5, "B's change listener did not come back"
        await asyncio.sleep(0.05)
    for _ in range(5):
        other = await a.create()
        await eventually(check(b, other.api_key), "OK", BOUND)
        await disable(a, other)()
        assert await eventually(check(b, other.api_key), "KEY_DISABLED", BOUND) < BOUND
    logs = replicas.b.logs()
    assert "change_listener_lost" in logs and logs.count("change_listener_up") > logged_before


async def test_a_stalled_listener_is_noticed_within_the_bound(
        replicas: Replicas, clients: tuple[Client, Client], admin: asyncpg.Connection,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Only B's LISTEN backend stops answering (its connection stays open, so nothing reports it lost);
    a key deleted through A meanwhile must be refused by B within BOUND, and B's listener comes back."""
    a, b = clients
    key = await a.create()
    await eventually(check(b, key.api_key), "OK", BOUND)

    async with load(b) as running:
        running.add("key", lambda: key.api_key)
        await asyncio.sleep(0.5)
        stalled = await the_listener(admin)
        with stopped([stalled]):
            await delete(a, key)()
            deleted = time.monotonic()
            await asyncio.sleep(BOUND + 1.0)

    stale = running.last("key", "OK") - deleted
    with capsys.disabled():
        print(f"\nlistener stalled: last stale OK {stale:.3f}s after the delete", end="")
    assert running.between("key", deleted + BOUND) == {"KEY_NOT_FOUND"}, f"stale {stale:.3f}s"
    assert running.between("key", 0) <= {"OK", "KEY_NOT_FOUND"}
    started = time.monotonic()
    while (pids := await listener_pids(admin)) == [] or stalled in pids:
        assert time.monotonic() - started < 5, f"B's change listener did not come back: {pids}"
        await asyncio.sleep(0.05)


# --- the pool's connections killed, or refused -------------------------------------------

REPLICA_C = "keygate-replica-c"
POOL_BACKENDS = """SELECT pid FROM pg_stat_activity
    WHERE application_name = $1 AND NOT (query LIKE 'LISTEN%' OR query = $2)"""  # $2: store.postgres.PING


@pytest.fixture
def replica_c(replicas: Replicas) -> Iterator[Served]:
    """A third replica, named in pg_stat_activity, whose log may show what the test provokes."""
    served = start("--database-url", f"{replicas.url}&application_name={REPLICA_C}", "--workers", "1")
    yield served
    stop(served)


@contextlib.asynccontextmanager
async def terminated(replicas: Replicas, admin: asyncpg.Connection) -> AsyncIterator[None]:
    """What a failover or an idle-connection reaper does: C's pooled connections killed, again and again."""
    killed = 0

    async def kill() -> None:
        nonlocal killed
        while True:
            for row in await admin.fetch(POOL_BACKENDS, REPLICA_C, PING):
                killed += await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
            await asyncio.sleep(0.02)

    killing = asyncio.create_task(kill())
    try:
        yield
    finally:
        killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)
    assert killed > 10


@contextlib.asynccontextmanager
async def refused(replicas: Replicas, admin: asyncpg.Connection) -> AsyncIterator[None]:
    """The database refuses new connections (as when max_connections is reached); C's pool, holding one
    connection, needs more for the concurrent Checks."""
    await admin.execute(f'ALTER DATABASE "{replicas.database}" ALLOW_CONNECTIONS false')
    try:
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{replicas.database}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("disrupt", [
    pytest.param(terminated, id="terminated"),
    pytest.param(refused, id="refused"),
])
async def test_database_connections_lost_under_load_fail_closed_and_never_internal(
        replicas: Replicas, replica_c: Served, admin: asyncpg.Connection,
        disrupt: Callable[[Replicas, asyncpg.Connection], contextlib.AbstractAsyncContextManager[None]]) -> None:
    """Each Check answers (KEY_NOT_FOUND for made-up keys) or fails closed with UNAVAILABLE, never
    INTERNAL; afterwards the replica answers normally again."""
    client = connect(replica_c, replicas.root)
    try:
        async with disrupt(replicas, admin), load(client) as running:
            running.add("new unknown", FORMAT.generate, loops=4)
            await asyncio.sleep(2.0)
        await eventually(check(client, FORMAT.generate()), "KEY_NOT_FOUND", BOUND)
    finally:
        await client.channel.close()
    assert running.between("new unknown", 0) <= {"KEY_NOT_FOUND", UNAVAILABLE}


# --- the database stopped and restarted -------------------------------------------------

CACHE_TTL = 1.0
OUTAGE_GRACE = 3.0
HELD_DOWN = CACHE_TTL + OUTAGE_GRACE + 1.5  # seconds the database stays down
RECOVERY = 5.0  # seconds within which everything must work again once PostgreSQL is back
LOOPS = 2  # concurrent Check loops per kind of key


@dataclass
class Outage:
    """What one run of the scenario saw: every Check's answer, and when each phase began."""

    load: Load
    stopping: float  # pg_ctl stop begins
    down: float  # PostgreSQL has stopped
    starting: float  # pg_ctl start begins
    back: float  # everything was seen working again
    recovered: float | None  # seconds from `starting` until it was; None if not within RECOVERY
    admin: dict[str, str]  # KeyService calls while the database was down -> outcome
    alive: bool  # the server process was still running at the end
    logs: str


async def run_outage(pg: PrivatePostgres) -> Outage:
    """Serve on `pg`, put Check load on it, stop PostgreSQL for HELD_DOWN seconds, start it again."""
    root = bootstrap(pg.url)
    served = start("--database-url", pg.url, "--workers", "1",
                   env={"KEYGATE_CACHE_TTL": str(CACHE_TTL), "KEYGATE_OUTAGE_GRACE": str(OUTAGE_GRACE)})
    client = connect(served, root)
    try:
        cached = await client.create()
        unknown = FORMAT.generate()  # one made-up key, asked again and again (negative-cached before)
        await eventually(check(client, cached.api_key), "OK", BOUND)
        await eventually(check(client, unknown), "KEY_NOT_FOUND", BOUND)
        async with load(client) as running:
            running.add("cached", lambda: cached.api_key, loops=LOOPS)
            running.add("unknown", lambda: unknown, loops=LOOPS)
            running.add("new unknown", FORMAT.generate, loops=LOOPS)  # a different made-up key every time
            await asyncio.sleep(1.0)

            stopping = time.monotonic()
            await pg.stop()
            down = time.monotonic()
            admin = {name: await outcome(call) for name, call in (
                ("ListKeys", lambda: client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(root),
                                                          timeout=RPC_TIMEOUT)),
                ("CreateKey", lambda: client.create(name="during the outage")),
            )}
            await asyncio.sleep(stopping + HELD_DOWN - time.monotonic())

            starting = time.monotonic()
            await pg.start()
            recovered = await recovery(starting, (
                (check(client, cached.api_key), "OK"), (check(client, unknown), "KEY_NOT_FOUND"),
                (lambda: client.create(name="after the outage"), "OK")))
            back = time.monotonic()
            await asyncio.sleep(0.5)
        alive = served.process.poll() is None
    finally:
        await client.channel.close()
        logs = finish(served)
    return Outage(running, stopping, down, starting, back, recovered, admin, alive, logs)


async def recovery(since: float, calls: Iterable[tuple[Callable[[], object], str]]) -> float | None:
    """Seconds from `since` until each call has given its wanted answer, in turn; None if not within RECOVERY."""
    with contextlib.suppress(AssertionError):
        for call, want in calls:
            await eventually(call, want, since + RECOVERY - time.monotonic())
        return time.monotonic() - since
    return None


@pytest.fixture(scope="module")
def outage(pg_dirs: Callable[[str], Path]) -> Outage:
    """The database stopped and restarted under Check load, once for all the tests below."""
    return on_private_postgres(pg_dirs, "outage", run_outage)


def test_a_cached_key_answers_for_a_bounded_time_then_fails_closed(
        outage: Outage, capsys: pytest.CaptureFixture[str]) -> None:
    """Within TTL + grace of its last read the cached key answers; after that, UNAVAILABLE (never OK)."""
    answers = outage.load
    with capsys.disabled():
        print(f"\ndatabase down {outage.starting - outage.down:.2f}s: the cached key answered until "
              f"{answers.last('cached', 'OK', outage.starting) - outage.down:.2f}s into it (TTL {CACHE_TTL}s + grace "
              f"{OUTAGE_GRACE}s); recovered {outage.recovered or float('nan'):.2f}s after the restart", end="")
    assert answers.between("cached", outage.down, outage.stopping + OUTAGE_GRACE - 0.3) == {"OK"}
    assert answers.between("cached", outage.down + CACHE_TTL + OUTAGE_GRACE, outage.starting) == {UNAVAILABLE}
    assert answers.between("cached", outage.down, outage.starting) <= {"OK", UNAVAILABLE}


@pytest.mark.parametrize("name", ["unknown", "new unknown"])
def test_an_unknown_key_fails_closed_with_unavailable_while_the_database_is_down(outage: Outage, name: str) -> None:
    """Neither KEY_NOT_FOUND (it cannot know) nor allowed, also for a key it had found unknown before."""
    assert outage.load.between(name, outage.down, outage.starting) == {UNAVAILABLE}


def test_key_service_calls_are_unavailable_while_the_database_is_down(outage: Outage) -> None:
    assert outage.admin == {"ListKeys": UNAVAILABLE, "CreateKey": UNAVAILABLE}


def test_everything_recovers_by_itself_when_the_database_returns(outage: Outage) -> None:
    assert outage.recovered is not None, f"not recovered within {RECOVERY}s of the restart"
    assert outage.load.between("cached", outage.back) == {"OK"}
    assert outage.load.between("unknown", outage.back) == outage.load.between("new unknown", outage.back) == {
        "KEY_NOT_FOUND"}
    assert outage.alive, f"the server exited during the outage:\n{outage.logs[-5000:]}"


def test_no_check_fails_otherwise_than_unavailable_while_the_database_is_down(outage: Outage) -> None:
    """Not INTERNAL, not a deadline. (The moment of the shutdown itself is left to the test above
    that kills the pool's connections: the race there makes INTERNAL only sometimes visible here.)"""
    for start_, end in ((outage.down, outage.starting), (outage.back, float("inf"))):
        seen = set().union(*(outage.load.between(name, start_, end) for name in outage.load.answers))
        assert seen <= {"OK", "KEY_NOT_FOUND", UNAVAILABLE}


def test_the_server_logs_no_traceback_through_the_outage(outage: Outage) -> None:
    assert_no_failures(outage.logs)


# --- the database hung --------------------------------------------------------------------

HUNG = 5.0  # seconds every PostgreSQL process stays stopped
KNOWN_UNREACHABLE = 2.5  # seconds into the hang by which it must be known: listener bound 1 s + lookup bound 1 s
WAIT_BOUND = 1.6  # no Check waits longer than this for its answer: the lookup bound (1 s), with slack


@dataclass
class Hang:
    """What one run of the hang scenario saw."""

    load: Load
    hung: float  # every PostgreSQL process stopped
    resumed: float  # ... and continued
    recovered: float | None  # seconds from `resumed` until everything worked again; None if not within RECOVERY
    back: float
    admin: dict[str, tuple[str, float]]  # KeyService calls during the hang -> (outcome, seconds it took)
    logs: str


async def timed(call: Callable[[], object]) -> tuple[str, float]:
    started = time.monotonic()
    got = await outcome(call)
    return got, time.monotonic() - started


async def run_hang(pg: PrivatePostgres) -> Hang:
    """Serve on `pg` with the default settings, put Check load on it, SIGSTOP PostgreSQL for HUNG seconds."""
    root = bootstrap(pg.url)
    served = start("--database-url", pg.url, "--workers", "1")
    client = connect(served, root)
    try:
        cached, gone = await client.create(), await client.create()
        for key in (cached, gone):
            await eventually(check(client, key.api_key), "OK", BOUND)
        await delete(client, gone)()  # cached before, deleted before the hang: never allowed again
        async with load(client) as running:
            running.add("cached", lambda: cached.api_key, loops=LOOPS)
            running.add("deleted", lambda: gone.api_key)
            running.add("new unknown", FORMAT.generate, loops=LOOPS)
            await asyncio.sleep(1.0)

            with stopped(postgres_processes(pg)):
                hung = time.monotonic()
                await asyncio.sleep(KNOWN_UNREACHABLE)
                admin = {name: await timed(call) for name, call in (
                    ("ListKeys", lambda: client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(root),
                                                              timeout=RPC_TIMEOUT)),
                    ("CreateKey", lambda: client.keys.CreateKey(
                        keys_pb2.CreateKeyRequest(name="during the hang", workspace_id="ws1",
                                                  permissions=["chatflows:view"]),
                        metadata=auth(root), timeout=RPC_TIMEOUT)),
                )}
                await asyncio.sleep(hung + HUNG - time.monotonic())
            resumed = time.monotonic()

            recovered = await recovery(resumed, (
                (check(client, cached.api_key), "OK"), (check(client, FORMAT.generate()), "KEY_NOT_FOUND"),
                (lambda: client.create(name="after the hang"), "OK")))
            back = time.monotonic()
            await asyncio.sleep(0.5)
    finally:
        await client.channel.close()
        logs = finish(served)
    return Hang(running, hung, resumed, recovered, back, admin, logs)


@pytest.fixture(scope="module")
def hang(pg_dirs: Callable[[str], Path]) -> Hang:
    """PostgreSQL hung and continued under Check load, once for the tests below (a server of its own:
    stopping the session's would stall every other test)."""
    return on_private_postgres(pg_dirs, "hang", run_hang)


def test_cached_keys_keep_answering_through_a_hung_database(hang: Hang, capsys: pytest.CaptureFixture[str]) -> None:
    answers = hang.load
    with capsys.disabled():
        print(f"\ndatabase hung {hang.resumed - hang.hung:.1f}s: cached Checks' slowest "
              f"{answers.slowest('cached', hang.hung, hang.resumed):.3f}s; uncached slowest "
              f"{answers.slowest('new unknown', hang.hung, hang.resumed):.3f}s; admin {hang.admin}; "
              f"recovered {hang.recovered or float('nan'):.2f}s after SIGCONT", end="")
    assert answers.between("cached", hang.hung, hang.resumed) == {"OK"}
    assert answers.slowest("cached", hang.hung, hang.resumed) < WAIT_BOUND


def test_what_is_not_cached_fails_closed_at_once_while_the_database_hangs(hang: Hang) -> None:
    answers = hang.load
    assert answers.between("new unknown", hang.hung, hang.resumed) <= {"KEY_NOT_FOUND", UNAVAILABLE}
    assert answers.between("new unknown", hang.hung + KNOWN_UNREACHABLE, hang.resumed) == {UNAVAILABLE}
    assert answers.slowest("new unknown", hang.hung, hang.resumed) < WAIT_BOUND
    assert {name: got for name, (got, _) in hang.admin.items()} == {"ListKeys": UNAVAILABLE, "CreateKey": UNAVAILABLE}
    assert max(took for _, took in hang.admin.values()) < WAIT_BOUND, hang.admin


def test_a_hung_database_never_allows_a_deleted_key(hang: Hang) -> None:
    assert hang.load.between("deleted", 0) <= {"KEY_NOT_FOUND", UNAVAILABLE}


def test_everything_recovers_by_itself_when_the_database_continues(hang: Hang) -> None:
    assert hang.recovered is not None, f"not recovered within {RECOVERY}s of SIGCONT"
    assert hang.load.between("cached", hang.back) == {"OK"}
    assert hang.load.between("new unknown", hang.back) == {"KEY_NOT_FOUND"}
    assert_no_failures(hang.logs)
