"""grpc.health.v1 as probes and load balancers meet it: per service, through a real PostgreSQL stopped and
restarted, then hung (every process SIGSTOPped) under Check load, watched with `Watch` and polled with
`Check` as a kubelet would, and asked with `keygate health`.

KeyService turns NOT_SERVING while the database is unreachable and SERVING again when it is back; the
process ("") and the authorization services stay SERVING throughout, while a cached key keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keygate.server import App
from keygate.store.postgres import PING
from keygate.v1 import authz_pb2

from .health_watch import NOT_SERVING, SERVING, Watched, name, until, watch
from .private_postgres import PrivatePostgres, on_private_postgres, postgres_processes, stopped
from .processes import Served, assert_no_failures, bootstrap, connect, finish, free_port, start
from .support import Client
from .test_startup import keygate

KEY_SERVICE = "keygate.v1.KeyService"
AUTHZ_SERVICES = ("keygate.v1.AuthzService", "envoy.service.auth.v3.Authorization")
SERVICES = ("", KEY_SERVICE, *AUTHZ_SERVICES)
DETECTED = 3.0  # seconds from the stop (or the hang) until KeyService says NOT_SERVING: the listener's
# 1 s bound, then one round trip bounded by the 1 s lookup timeout, with slack for a loaded machine
# (a listener still reconnecting after the previous outage would add its backoff and connect timeout)
RECOVERED = 5.0  # seconds from the restart (or SIGCONT) until it says SERVING again
HELD = 2.0  # seconds the database stays stopped (or hung) once KeyService has said NOT_SERVING
ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT = 1.0  # kubelet's default timeoutSeconds
POLL = 0.05
LOOPS = 4  # concurrent Check loops during the hang


@dataclass(frozen=True)
class Probe:
    asked: float
    service: str
    answer: str  # the status, or the RPC error's status name
    took: float


async def probe(channel: grpc.aio.Channel, service: str) -> Probe:
    asked = time.monotonic()
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5 * PROBE_TIMEOUT)
        answer = name(response.status)
    except grpc.aio.AioRpcError as error:
        answer = error.code().name
    return Probe(asked, service, answer, time.monotonic() - asked)


@contextlib.asynccontextmanager
async def observed(client: Client) -> AsyncIterator[tuple[dict[str, Watched], list[Probe]]]:
    """A Watch stream per service, and every service polled every POLL seconds, until the block ends."""
    watched = {service: Watched() for service in SERVICES}
    probes: list[Probe] = []

    async def poll() -> None:
        while True:
            probes.extend(await asyncio.gather(*(probe(client.channel, s) for s in SERVICES)))
            await asyncio.sleep(POLL)

    tasks = [asyncio.create_task(watch(client.channel, s, watched[s])) for s in SERVICES]
    tasks.append(asyncio.create_task(poll()))
    try:
        yield watched, probes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Phase:
    """One outage: when it began, when KeyService said so, when the database came back, when it said so."""

    began: float
    detected: float | None
    ended: float = 0.0
    recovered: float | None = None

    def detection(self) -> float:
        return float("inf") if self.detected is None else self.detected - self.began

    def recovery(self) -> float:
        return float("inf") if self.recovered is None else self.recovered - self.ended


@dataclass
class Outages:
    stop: Phase  # pg_ctl stop, no Check traffic: only the listener can notice
    hang: Phase  # every PostgreSQL process SIGSTOPped, under Check load
    watched: dict[str, Watched]
    probes: list[Probe]
    checks: dict[str, set[str]]  # the cached key's Check outcomes: "stop" (one, mid-outage), "hang" (the load's)
    cli: dict[str, int]  # `keygate health [--service S]` exit codes while the database was stopped
    logs: str


async def check_outcome(client: Client, api_key: str) -> str:
    try:
        response = await client.authz.Check(authz_pb2.CheckRequest(api_key=api_key, action="chatflows:view"),
                                            timeout=2.0)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return authz_pb2.DecisionCode.Name(response.code)


async def health_cli(served: Served, service: str) -> int:
    """`keygate health --service S`, off the event loop (a CLI start takes a while)."""
    done: subprocess.CompletedProcess[str] = await asyncio.to_thread(served.run, "health", "--service", service)
    return done.returncode


async def listening(pg: PrivatePostgres, within: float = 10.0) -> None:
    """Until keygate's change listener is connected (its LISTEN, or a ping since, is its last statement)."""
    conn = await asyncpg.connect(pg.url)
    try:
        deadline = time.monotonic() + within
        while not await conn.fetchval("""SELECT count(*) FROM pg_stat_activity
                                         WHERE query LIKE 'LISTEN%' OR query = $1""", PING):
            assert time.monotonic() < deadline, "the change listener did not come back"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def run_outages(pg: PrivatePostgres) -> Outages:
    root = bootstrap(pg.url)
    served = start("--database-url", pg.url, "--workers", "1")
    client = connect(served, root)
    try:
        cached = await client.create()
        assert await check_outcome(client, cached.api_key) == "OK"
        async with observed(client) as (watched, probes):
            key_service = watched[KEY_SERVICE]
            await asyncio.sleep(0.5)

            halt = Phase(time.monotonic(), None)
            await pg.stop()
            halt.detected = await until(key_service, NOT_SERVING, halt.began, DETECTED + 2)
            checks = {"stop": {await check_outcome(client, cached.api_key)}}
            cli = {service: await health_cli(served, service) for service in SERVICES}
            await asyncio.sleep(HELD)
            halt.ended = time.monotonic()
            await pg.start()
            halt.recovered = await until(key_service, SERVING, halt.ended, RECOVERED + 2)

            await listening(pg)  # the steady state again: the listener reconnects on its own backoff
            outcomes: list[str] = []

            async def load() -> None:
                while True:
                    outcomes.append(await check_outcome(client, cached.api_key))
                    await asyncio.sleep(0.005)

            loops = [asyncio.create_task(load()) for _ in range(LOOPS)]
            await asyncio.sleep(1.0)
            with stopped(postgres_processes(pg)):
                hang = Phase(time.monotonic(), None)
                hang.detected = await until(key_service, NOT_SERVING, hang.began, DETECTED + 2)
                await asyncio.sleep(HELD)
                hang.ended = time.monotonic()
            hang.recovered = await until(key_service, SERVING, hang.ended, RECOVERED + 2)
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            checks["hang"] = set(outcomes)
            await asyncio.sleep(0.5)
    finally:
        await client.channel.close()
        logs = finish(served)
    return Outages(halt, hang, watched, probes, checks, cli, logs)


@pytest.fixture(scope="module")
def outages(pg_dirs: Callable[[str], Path]) -> Outages:
    return on_private_postgres(pg_dirs, "health", run_outages)


def test_key_service_is_not_serving_while_the_database_is_unreachable(
        outages: Outages, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nKeyService NOT_SERVING {outages.stop.detection():.2f}s after pg_ctl stop began (idle), "
              f"{outages.hang.detection():.2f}s after SIGSTOP (under load); SERVING again "
              f"{outages.stop.recovery():.2f}s after pg_ctl start, {outages.hang.recovery():.2f}s after SIGCONT; "
              f"slowest health Check {max(p.took for p in outages.probes) * 1000:.0f} ms "
              f"of {len(outages.probes)}", end="")
    for phase in (outages.stop, outages.hang):
        assert phase.detection() < DETECTED
        assert phase.recovery() < RECOVERED
    assert outages.watched[KEY_SERVICE].statuses() == [SERVING, NOT_SERVING, SERVING, NOT_SERVING, SERVING]
    polled = [p for p in outages.probes if p.service == KEY_SERVICE]
    for phase in (outages.stop, outages.hang):
        assert {p.answer for p in polled if phase.detected + 0.1 < p.asked < phase.ended} == {NOT_SERVING}
        assert {p.answer for p in polled if p.asked > phase.recovered + 0.1} <= {SERVING, NOT_SERVING}
    assert {p.answer for p in polled if p.asked > outages.hang.recovered + 0.1} == {SERVING}


@pytest.mark.parametrize("service", ["", *AUTHZ_SERVICES])
def test_the_process_and_the_authorization_services_stay_serving(outages: Outages, service: str) -> None:
    """Readiness (AuthzService) and liveness ("") never take a replica out for a database outage."""
    assert outages.watched[service].statuses() == [SERVING]
    assert {p.answer for p in outages.probes if p.service == service} == {SERVING}


def test_a_cached_key_keeps_answering_meanwhile(outages: Outages) -> None:
    assert outages.checks == {"stop": {"OK"}, "hang": {"OK"}}


def test_health_answers_fast_also_under_load_and_with_the_database_hung(outages: Outages) -> None:
    """It never waits on the database: every poll answered within kubelet's default probe timeout."""
    assert max(p.took for p in outages.probes) < PROBE_TIMEOUT


def test_the_health_command_exits_with_the_status(outages: Outages) -> None:
    assert outages.cli == {"": 0, KEY_SERVICE: 1, **{s: 0 for s in AUTHZ_SERVICES}}


def test_no_failure_logged_through_the_outages(outages: Outages) -> None:
    assert_no_failures(outages.logs)


@pytest.mark.parametrize(("args", "status", "says"), [
    ((), 0, "SERVING\n"),
    (("--service", KEY_SERVICE), 0, "SERVING\n"),
    (("--service", "keygate.v1.NoSuchService"), 1, "error: NOT_FOUND: keygate serves no service of that name\n"),
])
async def test_the_health_command_exits_with_the_answer(app: App, args: tuple[str, ...], status: int,
                                                        says: str) -> None:
    done = await asyncio.to_thread(keygate, "health", *args, KEYGATE_SERVER=f"127.0.0.1:{app.port}")
    assert done.returncode == status, done.stderr
    assert done.stdout + done.stderr == says


def test_the_health_command_exits_2_when_keygate_is_unreachable() -> None:
    done = keygate("health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert done.returncode == 2
    assert done.stderr.startswith("error: UNAVAILABLE: cannot reach keygate at 127.0.0.1:"), done.stderr
