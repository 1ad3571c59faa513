"""SIGTERM as Kubernetes sends it, to real `keygate serve` processes with calls in flight: health says
NOT_SERVING first, no new connection is accepted, calls in flight finish within the grace (or are cancelled
when it ends, changing nothing), the usage counted so far reaches the database, and the process exits 0.
And workers end with their supervisor, even when it is SIGKILLed.

An admin call is held in flight honestly: the test's own transaction locks the key's row, as another
replica's transaction would, so UpdateKey waits in PostgreSQL until the test commits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import grpc
import psutil
import pytest

from keygate.config import Settings
from keygate.server import App, serve_until_signalled
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2

from .health_watch import NOT_SERVING, SERVING, Watched, until, watch
from .processes import Served, assert_no_failures, bootstrap, connect, start
from .support import Client, auth
from .test_startup import keygate

LOOPS = 8  # concurrent Check loops, so that some are in flight when the signal arrives
BURST = 300  # concurrent Checks, most of them queued inside grpc when the drain begins
HELD = 1.0  # seconds the row lock holds UpdateKey in flight after SIGTERM
EXIT_BOUND = 5.0  # seconds a process may take beyond the calls it waits for: flush usage, close the pool


def disable(client: Client, key: keys_pb2.CreateKeyResponse) -> grpc.aio.UnaryUnaryCall:
    request = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key.key.id, disabled=True))
    request.update_mask.paths.append("disabled")
    return client.keys.UpdateKey(request, metadata=auth(client.root), timeout=30)


@contextlib.asynccontextmanager
async def row_locked(database_url: str, key: keys_pb2.CreateKeyResponse) -> AsyncIterator[asyncpg.Connection]:
    """The key's row locked by a transaction of the test's own, committed when the block ends."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", UUID(key.key.id))
            yield conn
    finally:
        await conn.close()


async def waiting_on_the_lock(conn: asyncpg.Connection, within: float = 10.0) -> None:
    """Until a statement of keygate's waits for the row lock."""
    deadline = time.monotonic() + within
    while not await conn.fetchval("""SELECT count(*) FROM pg_stat_activity
                                      WHERE datname = current_database() AND wait_event_type = 'Lock'"""):
        assert time.monotonic() < deadline, "UpdateKey never reached the row lock"
        await asyncio.sleep(0.02)


async def exit_code(served: Served, within: float) -> tuple[int, float]:
    """The process's exit status, and when it exited (time.monotonic())."""
    code = await asyncio.to_thread(served.process.wait, within)
    return code, time.monotonic()


def refuses_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_calls_in_flight_flushes_usage_and_exits_0(
        database_url: str, db: asyncpg.Connection, workers: int, capsys: pytest.CaptureFixture[str]) -> None:
    grace = 10.0
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", str(workers), "--shutdown-grace", str(grace))
    client = connect(served, root)
    try:
        used, locked = await client.create(name="used"), await client.create(name="locked")
        overall = Watched()
        watching = asyncio.create_task(watch(client.channel, "", overall))
        checks: list[tuple[float, float, str]] = []  # (sent, answered, outcome)

        async def check_while_serving() -> None:
            """As a load balancer that follows health does: send until it says NOT_SERVING."""
            while overall.statuses()[-1:] == [SERVING]:
                sent = time.monotonic()
                try:
                    response = await client.authz.Check(authz_pb2.CheckRequest(api_key=used.api_key,
                                                                               action="chatflows:view"), timeout=5)
                    outcome = authz_pb2.DecisionCode.Name(response.code)
                except grpc.aio.AioRpcError as error:
                    outcome = error.code().name
                checks.append((sent, time.monotonic(), outcome))

        async with row_locked(database_url, locked) as blocker:
            update = asyncio.ensure_future(disable(client, locked))
            await waiting_on_the_lock(blocker)
            loops = [asyncio.create_task(check_while_serving()) for _ in range(LOOPS)]
            await asyncio.sleep(0.5)
            served.process.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            said_not_serving = await until(overall, NOT_SERVING, sigterm, 2.0)
            await asyncio.wait_for(asyncio.gather(*loops), 5)
            while not refuses_connections(served.address) and time.monotonic() < sigterm + HELD:
                await asyncio.sleep(0.02)
            refused = time.monotonic()
            await asyncio.sleep(sigterm + HELD - time.monotonic())
        updated = await update
        code, exited = await exit_code(served, grace + EXIT_BOUND)
        await watching
    finally:
        await client.channel.close()
        if served.process.poll() is None:
            served.process.kill()

    logs = served.logs()
    with capsys.disabled():
        print(f"\n{workers} worker(s), after SIGTERM: NOT_SERVING {(said_not_serving or math.nan) - sigterm:.3f}s, "
              f"new connections refused {refused - sigterm:.3f}s, "
              f"exit {code} at {exited - sigterm:.2f}s ({HELD}s waiting on the lock); "
              f"{len(checks)} Checks, {sum(1 for *_, o in checks if o == 'OK')} OK", end="")
    assert code == 0, logs
    assert exited - sigterm < HELD + EXIT_BOUND < grace
    assert overall.statuses() == [SERVING, NOT_SERVING] and overall.ended == "OK"
    assert refused < sigterm + HELD, "new connections were still accepted while a call was in flight"
    assert updated.disabled  # the call in flight completed, and committed
    assert await db.fetchval("SELECT disabled FROM api_keys WHERE id = $1", UUID(locked.key.id))
    assert {outcome for *_, outcome in checks} == {"OK"}
    assert any(sent < sigterm < answered for sent, answered, _ in checks), "no Check was in flight at SIGTERM"
    allowed = len(checks)
    assert await db.fetchval("SELECT usage_count FROM api_keys WHERE id = $1", UUID(used.key.id)) == allowed
    assert '"stopped"' in logs
    assert_no_failures(logs)


async def test_calls_still_running_when_the_grace_ends_are_cancelled_and_change_nothing(
        database_url: str, db: asyncpg.Connection) -> None:
    grace = 1.0
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1", "--shutdown-grace", str(grace))
    client = connect(served, root)
    try:
        locked = await client.create(name="locked")
        async with row_locked(database_url, locked) as blocker:
            update = asyncio.ensure_future(disable(client, locked))
            await waiting_on_the_lock(blocker)
            served.process.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            code, exited = await exit_code(served, grace + EXIT_BOUND)
            with pytest.raises(grpc.aio.AioRpcError) as cancelled:
                await update
    finally:
        await client.channel.close()
        if served.process.poll() is None:
            served.process.kill()
    assert code == 0, served.logs()
    assert grace <= exited - sigterm < grace + EXIT_BOUND
    assert cancelled.value.code() == grpc.StatusCode.UNAVAILABLE, cancelled.value  # "Cancelling all calls"
    assert not await db.fetchval("SELECT disabled FROM api_keys WHERE id = $1", UUID(locked.key.id))


async def test_a_burst_of_calls_queued_when_the_drain_begins_is_answered(database_url: str) -> None:
    """grpc's stop answers CANCELLED to every call it has received but not yet handed to keygate; the drain
    first serves on until no call arrives, so a burst in flight at the signal is answered in full."""
    app = await App.start(Settings(listen="127.0.0.1:0"), database_url)
    _, root = await app.admin.create_root_key()
    outcomes: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = authz_pb2_grpc.AuthzServiceStub(channel)
        request = authz_pb2.CheckRequest(api_key=root, action="chatflows:view")
        await stub.Check(request)

        async def check() -> None:
            try:
                outcomes.append(authz_pb2.DecisionCode.Name((await stub.Check(request, timeout=10)).code))
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)

        burst = [asyncio.create_task(check()) for _ in range(BURST)]
        while len(outcomes) < 10:
            await asyncio.sleep(0.001)
        await app.stop(grace=5)
        await asyncio.gather(*burst)
    assert collections.Counter(outcomes) == {"OK": BURST}


async def test_a_drain_does_not_wait_for_health_watch_streams(database_url: str) -> None:
    """A Watch lasts as long as its client: the drain ends it after saying NOT_SERVING, rather than
    waiting the whole grace for it."""
    app = await App.start(Settings(listen="127.0.0.1:0"), database_url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        watched = {service: Watched() for service in ("", "keygate.v1.KeyService", "no.such.Service")}
        watching = [asyncio.create_task(watch(channel, service, into)) for service, into in watched.items()]
        while not all(into.seen for into in watched.values()):
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await app.stop(grace=30)
        took = time.monotonic() - started
        await asyncio.gather(*watching)
    assert took < 2.0
    assert watched[""].statuses() == watched["keygate.v1.KeyService"].statuses() == [SERVING, NOT_SERVING]
    assert watched["no.such.Service"].statuses() == ["SERVICE_UNKNOWN"]
    assert {w.ended for w in watched.values()} == {"OK"}


async def test_workers_end_with_their_supervisor_even_when_it_is_killed(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    served = start("--database-url", database_url, "--workers", "2")
    supervisor = psutil.Process(served.process.pid)
    children = supervisor.children(recursive=True)  # the two workers and multiprocessing's resource tracker
    assert len(children) == 3, children
    served.process.kill()
    killed = time.monotonic()
    while not all(map(ended, children)) and time.monotonic() - killed < EXIT_BOUND:
        await asyncio.sleep(0.01)
    took = time.monotonic() - killed
    served.process.wait()
    alive = [process for process in children if not ended(process)]
    for process in alive:
        process.kill()
    with capsys.disabled():
        print(f"\nsupervisor SIGKILLed: its {len(children)} children ended within {took:.2f}s", end="")
    assert alive == []
    assert refuses_connections(served.address)


def ended(process: psutil.Process) -> bool:
    """Exited: gone, or a zombie that no one has reaped yet (its parent is dead; init reaps in its own time)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_worker_stops_when_the_pipe_from_its_supervisor_closes(database_url: str) -> None:
    """The portable half of the above, on its own: end of file on the pipe multiprocessing keeps open from
    the supervisor (Linux's PR_SET_PDEATHSIG, the other half, would signal first)."""
    read, write = os.pipe()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_until_signalled(Settings(listen="127.0.0.1:0", shutdown_grace=5), database_url,
                                                        on_ready=ready.set_result, supervisor_gone=read))
    try:
        port = await asyncio.wait_for(ready, 30)
        assert not refuses_connections(f"127.0.0.1:{port}")
        os.close(write)
        await asyncio.wait_for(serving, 5)
    finally:
        os.close(read)
    assert refuses_connections(f"127.0.0.1:{port}")


@pytest.mark.parametrize(("args", "env", "status", "says"), [
    (("--shutdown-grace", "soon"), {}, 1,
     "keygate: KEYGATE_SHUTDOWN_GRACE (--shutdown-grace): must be a number, not 'soon'"),
    (("--shutdown-grace", "0"), {}, 1, "keygate: KEYGATE_SHUTDOWN_GRACE (--shutdown-grace): must be positive"),
    ((), {"KEYGATE_SHUTDOWN_GRACE": "-1"}, 1, "keygate: KEYGATE_SHUTDOWN_GRACE (--shutdown-grace): must be positive"),
    ((), {"KEYGATE_SHUTDOWN_GRACE": "inf"}, 1,
     "keygate: KEYGATE_SHUTDOWN_GRACE (--shutdown-grace): must be a finite number, not 'inf'"),
])
def test_a_wrong_shutdown_grace_is_one_line(database_url: str, args: tuple[str, ...], env: dict[str, str],
                                            status: int, says: str) -> None:
    done = keygate("serve", "--listen", "127.0.0.1:0", "--database-url", database_url, *args, **env)
    assert done.returncode == status
    assert done.stderr.splitlines()[-1].endswith(says), done.stderr
    assert "Traceback" not in done.stderr
