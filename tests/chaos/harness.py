"""One chaos run: two real `keygate serve` processes on one database, Check and admin load, one fault.

A takes the admin load (a writer creating keys and disabling them, every acknowledged write in a
ledger); B answers the Checks, so every revocation reaches it the way it reaches any replica: through
the database and its change listener. B Checks, in concurrent loops:

- `live`: a key created and cached before the fault, never changed (cached keys keep answering);
- `revoked`: a key disabled before the fault, its refusal seen by B first;
- `unknown`: a different made-up key every time;
- `written`: a key the writer disabled (acknowledged) more than BOUND ago.

A false allow is an OK for `revoked`, `unknown` or `written`: a key revoked before (beyond the README's
propagation bound) or one that never existed. A lost write is an acknowledged create whose key is not
in the database afterwards, or an acknowledged disable whose key is not disabled. Recovery is the time
from the repair (restart, SIGCONT, promotion; for a fault that repairs itself, its injection) until a
key created through A is acknowledged and B allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc

from keygate.v1 import keys_pb2

from ..e2e.conftest import _http as request
from ..e2e.test_envoy import bearer
from ..integration.load import (
    BOUND,
    FORMAT,
    POLL,
    RPC_TIMEOUT,
    UNAVAILABLE,
    Load,
    check,
    disable,
    eventually,
    load,
    outcome,
)
from ..integration.processes import Served, assert_no_failures, bootstrap, connect, finish, start
from ..integration.support import Client, auth

RECOVERY = 5.0  # seconds from the repair within which writes and Checks must work again
WARM_UP = 0.5  # seconds of load before the fault
SETTLE = 0.5  # seconds of load after the recovery
# A write's deadline: above the server's own bounds (pool acquire 2 s, a statement 5 s), so that a write
# caught by a hung database answers UNAVAILABLE rather than leaving its outcome unknown.
WRITE_TIMEOUT = 8.0
FALSE_ALLOW_NAMES = ("revoked", "unknown", "written")
# Every answer a Check may give in a run: an allowed or refused key, or fail closed. Never INTERNAL, never
# a deadline (every wait is bounded), never KEY_NOT_FOUND for a key that exists (a failed lookup is
# UNAVAILABLE, not "not found").
ANSWERS = {"live": {"OK", UNAVAILABLE}, "revoked": {"KEY_DISABLED", UNAVAILABLE},
           "unknown": {"KEY_NOT_FOUND", UNAVAILABLE}, "written": {"KEY_DISABLED", UNAVAILABLE, "OK"}}


@dataclass
class Row:
    """One line of the chaos table."""

    fault: str
    checks: int
    false_allows: int
    lost_writes: int
    unavailable: int
    recovery: float | None  # seconds; None: not within RECOVERY
    writes: int  # acknowledged writes

    def cells(self) -> tuple[str, ...]:
        recovery = "-" if self.recovery is None else f"{self.recovery:.2f} s"
        return (self.fault, str(self.checks), str(self.false_allows), str(self.lost_writes), str(self.unavailable),
                recovery, str(self.writes))


HEADER = ("fault", "checks", "false allows", "lost writes", "unavailable", "recovery", "writes acked")
ROWS: list[Row] = []  # every run's row, printed as the table at the end of the session (conftest.py)


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (the README quotes it)."""
    lines = [HEADER, tuple("---" for _ in HEADER), *(row.cells() for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


@dataclass
class Writer:
    """Admin load through one client: create a key, disable it, again; what was acknowledged is kept."""

    client: Client
    created: dict[str, str] = field(default_factory=dict)  # key id -> api key, create acknowledged
    disabled: dict[str, tuple[str, float]] = field(default_factory=dict)  # key id -> (api key, acknowledged at)
    answers: list[str] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                made = await self.client.keys.CreateKey(
                    keys_pb2.CreateKeyRequest(name="chaos", workspace_id="ws1", permissions=["chatflows:view"]),
                    metadata=auth(self.client.root), timeout=WRITE_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                self.answers.append(error.code().name)
                await asyncio.sleep(0.05)
                continue
            self.answers.append("OK")
            self.created[made.key.id] = made.api_key
            while not self._stopping.is_set():  # the same key until its disable is acknowledged
                got = await outcome(disable(self.client, made, WRITE_TIMEOUT))
                self.answers.append(got)
                if got == "OK":
                    self.disabled[made.key.id] = (made.api_key, time.monotonic())
                    break
                await asyncio.sleep(0.05)

    def revoked_before(self, fallback: str) -> str:
        """A key whose disable was acknowledged more than BOUND ago (`fallback` until there is one)."""
        settled = [api_key for api_key, at in self.disabled.values() if at < time.monotonic() - BOUND]
        return random.choice(settled) if settled else fallback

    async def lost(self, database_url: str) -> int:
        """Acknowledged writes the database does not have."""
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT id::text, disabled FROM api_keys WHERE id = ANY($1::uuid[])",
                                    list(self.created))
        finally:
            await conn.close()
        stored = {r["id"]: r["disabled"] for r in rows}
        return sum(key_id not in stored for key_id in self.created) + sum(
            not stored.get(key_id, False) for key_id in self.disabled)


@dataclass
class HttpLoad:
    """Requests through Envoy (GET /api/v1/chatflows), one loop per key, each status kept with when it was sent."""

    port: int
    keys: dict[str, str]  # name -> api key
    seen: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stopping = asyncio.Event()

        async def loop(name: str, api_key: str) -> None:
            seen = self.seen.setdefault(name, [])
            while not stopping.is_set():
                asked = time.monotonic()
                answer = await asyncio.to_thread(request, self.port, "GET", "/api/v1/chatflows", bearer(api_key))
                seen.append((asked, answer.status))
                await asyncio.sleep(POLL)

        tasks = [asyncio.create_task(loop(name, api_key)) for name, api_key in self.keys.items()]
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*tasks)

    def statuses(self, name: str, start: float, end: float = float("inf")) -> set[int]:
        return {status for asked, status in self.seen[name] if start <= asked < end}

    def count(self, name: str, status: int, start: float = 0.0, end: float = float("inf")) -> int:
        return sum(s == status and start <= asked < end for asked, s in self.seen[name])


@dataclass
class Scene:
    """The processes a fault acts on: A (admin load), B (Checks, named in pg_stat_activity), their database."""

    a: Served
    b: Served
    root: str
    url: str  # the database, as keygate is given it
    name: str  # B's application_name


@contextlib.asynccontextmanager
async def scene(url: str, name: str, *, b_workers: int = 1, b_address: str | None = None) -> AsyncIterator[Scene]:
    """A and B serving `url` (B named `name`, on `b_address` if given), stopped afterwards; neither may log a
    traceback or INTERNAL."""
    root = bootstrap(url)
    made = Scene(start("--database-url", url, "--workers", "1"), start_b(url, name, b_workers, b_address),
                 root, url, name)
    try:
        yield made
    finally:
        for served in (made.a, made.b):
            assert_no_failures(finish(served))


def start_b(url: str, name: str, workers: int = 1, address: str | None = None) -> Served:
    return start("--database-url", f"{url}&application_name={name}", "--workers", str(workers), address=address)



@dataclass
class Extra:
    """A further Check loop of one run: its key, the answers it may give, and how many of them were false
    allows (an over-admission, for a limited key)."""

    api_key: str
    answers: set[str]
    false_allows: Callable[[Load], int]


async def run(fault: str, scene_: Scene, inject: Callable[[], Awaitable[None]], *,
              verify_url: Callable[[], str] | None = None,
              extra: Callable[[Client], Awaitable[dict[str, Extra]]] | None = None) -> tuple[Row, Load]:
    """Load on `scene_`, then `inject()` (the fault and its repair: it returns once repaired), then
    recovery; the row is added to the table and returned with every Check's answer."""
    a, b = connect(scene_.a, scene_.root), connect(scene_.b, scene_.root)
    try:
        live, revoked = await a.create(), await a.create()
        await eventually(check(b, live.api_key), "OK", RECOVERY)
        await eventually(check(b, revoked.api_key), "OK", RECOVERY)
        await disable(a, revoked)()
        await eventually(check(b, revoked.api_key), "KEY_DISABLED", BOUND)
        extras = await extra(a) if extra else {}
        writer = Writer(a)
        async with load(b) as running:
            running.add("live", lambda: live.api_key, loops=2)
            running.add("revoked", lambda: revoked.api_key)
            running.add("unknown", FORMAT.generate)
            running.add("written", lambda: writer.revoked_before(revoked.api_key))
            for name, more in extras.items():
                running.add(name, lambda key=more.api_key: key)
            writer.start()
            try:
                await asyncio.sleep(WARM_UP)
                await inject()
                repaired = time.monotonic()
                recovery = await recovered(a, b, repaired)
                await asyncio.sleep(SETTLE)
            finally:
                await writer.stop()
        lost = await writer.lost((verify_url or (lambda: scene_.url))())
    finally:
        await a.channel.close()
        await b.channel.close()
    answers = [x for name in running.answers for x in running.answers[name]]
    row = Row(fault, len(answers),
              sum(x.outcome == "OK" for name in FALSE_ALLOW_NAMES for x in running.answers[name])
              + sum(more.false_allows(running) for more in extras.values()),
              lost, sum(x.outcome == UNAVAILABLE for x in answers), recovery,
              len(writer.created) + len(writer.disabled))
    ROWS.append(row)
    allowed = {**ANSWERS, **{name: more.answers for name, more in extras.items()}}
    unexpected = {name: running.between(name, 0) - answers_ for name, answers_ in allowed.items()}
    assert not any(unexpected.values()), f"{fault}: answers outside the allowed ones: {unexpected}"
    assert set(writer.answers) <= {"OK", UNAVAILABLE}, f"{fault}: admin answers {set(writer.answers)}"
    return row, running


async def recovered(a: Client, b: Client, since: float) -> float | None:
    """Seconds from `since` until a key created through A is acknowledged and allowed by B; None if not
    within RECOVERY."""
    deadline = since + RECOVERY
    while time.monotonic() < deadline:
        try:
            made = await a.keys.CreateKey(
                keys_pb2.CreateKeyRequest(name="recovery", workspace_id="ws1", permissions=["chatflows:view"]),
                metadata=auth(a.root), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
            continue
        with contextlib.suppress(AssertionError):
            await eventually(check(b, made.api_key), "OK", max(0.0, deadline - time.monotonic()))
            return time.monotonic() - since
    return None


def assert_holds(row: Row, running: Load, *, cached_always_ok: bool = True) -> None:
    """The fixed assertions of every fault: zero false allows, zero lost writes, recovery within RECOVERY;
    and, unless the fault takes B's own process away, cached keys answered OK throughout."""
    assert row.false_allows == 0, f"{row.fault}: {row.false_allows} false allows"
    assert row.lost_writes == 0, f"{row.fault}: {row.lost_writes} acknowledged writes lost"
    assert row.recovery is not None, f"{row.fault}: not recovered within {RECOVERY} s of the repair"
    if cached_always_ok:
        assert running.between("live", 0) == {"OK"}, f"{row.fault}: a cached key answered {running.between('live', 0)}"
