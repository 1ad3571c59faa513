"""`keygate import flowise` against real Flowise databases (its own DDL, SQLite and PostgreSQL), and each
imported key then asked about through AuthzService.Check on a real gRPC channel: allowed and refused
exactly as Flowise allowed and refused it."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygate.config import Settings
from keygate.domain.keys import KeyFormat
from keygate.domain.permissions import Catalog
from keygate.flowise_import import Report, import_flowise
from keygate.server import App
from keygate.store.flowise import open_source
from keygate.store.postgres import DatabaseSettings, Store
from keygate.v1 import authz_pb2
from tests.flowise_db import Flow, Key, flowise_secret, postgres_flowise, sqlite_flowise

from ..conftest import Postgres
from .conftest import STOP_SECONDS, stop_within
from .processes import KEYGATE, clean_environment
from .support import Client, connect

Code = authz_pb2.DecisionCode
WS_A, WS_B = str(uuid.uuid4()), str(uuid.uuid4())
TABLES = ("api_keys", "key_secrets", "resource_bindings", "audit_events")


@dataclass
class Flowise:
    """A Flowise with every case the import must tell apart."""

    prod: Key = field(default_factory=lambda: Key("Production", WS_A, ["chatflows:view", "chatflows:update"]))
    reader: Key = field(default_factory=lambda: Key("Reader", WS_A, ["chatflows:view"]))
    tools: Key = field(default_factory=lambda: Key("Tools of B", WS_B, ["tools:view"]))
    unknown: Key = field(default_factory=lambda: Key("Billing", WS_A, ["chatflows:view", "billing:charge"]))
    twin: Key = field(default_factory=lambda: Key("Twin 1", WS_A, ["chatflows:view"]))
    orphan: Key = field(default_factory=lambda: Key("No workspace", None, ["chatflows:view"]))
    forged: Key = field(default_factory=lambda: Key("Bad secret", WS_A, ["chatflows:view"],
                                                    api_secret=flowise_secret("not this key")))
    flows: list[Flow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.twin2 = Key("Twin 2", WS_A, ["tools:view"], api_key=self.twin.api_key)
        self.bound = Flow(WS_A, self.prod.id)
        self.on_refused = Flow(WS_A, self.unknown.id)
        self.elsewhere = Flow(WS_B, self.prod.id)
        self.dangling = Flow(WS_A, str(uuid.uuid4()))
        self.open = Flow(WS_A, None)
        self.flows = [self.bound, self.on_refused, self.elsewhere, self.dangling, self.open]

    @property
    def keys(self) -> list[Key]:
        return [self.prod, self.reader, self.tools, self.unknown, self.twin, self.twin2, self.orphan, self.forged]

    @property
    def imported(self) -> list[Key]:
        return [self.prod, self.reader, self.tools]

    @property
    def refused(self) -> list[Key]:
        return [self.unknown, self.twin, self.twin2, self.orphan, self.forged]


async def answer(client: Client, key: Key, action: str, flow: Flow | None = None, workspace: str = "") -> int:
    response = await client.check(key.api_key, f"chatflows/{flow.id}" if flow else "", action, workspace)
    assert response.allowed == (response.code == Code.OK)
    return response.code


async def assert_decided_as_flowise_did(client: Client, f: Flowise) -> None:
    """What each key could do in Flowise: its permissions; prediction for every key (Flowise never checks
    `predictions:create`) except on a flow restricted to another key; nothing for a key Flowise refused."""
    expected = [
        (f.prod, "chatflows:view", f.bound, Code.OK),
        (f.prod, "chatflows:update", f.bound, Code.OK),
        (f.prod, "chatflows:delete", f.bound, Code.PERMISSION_DENIED),
        (f.prod, "predictions:create", f.bound, Code.OK),
        (f.prod, "tools:view", None, Code.PERMISSION_DENIED),
        (f.reader, "predictions:create", f.bound, Code.RESOURCE_BOUND_TO_OTHER_KEY),
        (f.reader, "predictions:create", f.open, Code.OK),
        (f.reader, "chatflows:view", f.bound, Code.OK),  # a restriction governs use, not management
        (f.reader, "chatflows:update", f.open, Code.PERMISSION_DENIED),
        (f.tools, "tools:view", None, Code.OK),
        (f.tools, "chatflows:view", f.open, Code.PERMISSION_DENIED),
        *[(k, "chatflows:view", f.open, Code.KEY_NOT_FOUND) for k in f.refused],
    ]
    got = [(k.name, a, await answer(client, k, a, flow)) for k, a, flow, _ in expected]
    assert got == [(k.name, a, code) for k, a, flow, code in expected]
    assert await answer(client, f.tools, "predictions:create", f.open, WS_A) == Code.WORKSPACE_MISMATCH


def assert_reported(report_text: str, f: Flowise, *, dry: bool = False) -> None:
    verb = "would import" if dry else "imported"
    for key in f.imported:
        assert f"key {key.id} {key.name!r} workspace {key.workspace}: {verb}" in report_text
    for key, why in ((f.unknown, "'billing:charge'"), (f.twin, "2 rows"), (f.twin2, "2 rows"),
                     (f.orphan, "without a workspace"), (f.forged, "apiSecret")):
        line = next(line for line in report_text.splitlines() if line.startswith(f"key {key.id} "))
        assert "REFUSED" in line and why in line, line
    for flow in (f.on_refused, f.elsewhere, f.dangling):
        assert f"flow {flow.id}: LEFT TO FLOWISE" in report_text
    assert f"flow {f.bound.id}: {'would bind' if dry else 'bound'} chatflows/{f.bound.id}" in report_text
    assert f"keys: 3 {'would be ' if dry else ''}imported, 0 already in keygate, 5 refused" in report_text


def assert_no_secret(keys: list[Key], *printed: str, stored: str = "") -> None:
    """Neither a key nor its digest (as hex) in anything the import printed; no key in what it stored
    (key_secrets holds the digests: that is where they belong)."""
    for text in printed:
        for key in keys:
            assert key.api_key not in text and hashlib.sha256(key.api_key.encode()).hexdigest() not in text
    assert not [k for k in keys if k.api_key in stored]


async def counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


async def everything_stored(url: str) -> str:
    """Every row of keygate's tables as text (digests as hex): to look for key material."""
    conn = await asyncpg.connect(url)
    try:
        rows = [await conn.fetch(f"SELECT t::text FROM {t} t") for t in TABLES]
        return "\n".join(r[0] for table in rows for r in table)
    finally:
        await conn.close()


def flowise_restrictions(path: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute('SELECT "id", "apikeyid" FROM "chat_flow"').fetchall())
    finally:
        conn.close()


def run_import(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYGATE, "import", "flowise", *args], capture_output=True, text=True, timeout=120,
                          env=clean_environment())


@pytest.fixture
def flowise() -> Flowise:
    return Flowise()


@pytest.fixture
def sqlite_file(flowise: Flowise, tmp_path: Path) -> Path:
    return sqlite_flowise(tmp_path / "database.sqlite", flowise.keys, flowise.flows)


@pytest.fixture
async def flowise_pg(flowise: Flowise, postgres: Postgres) -> str:
    url = await postgres.fresh_database(template="template0")  # Flowise's own database, empty
    await postgres_flowise(url, flowise.keys, flowise.flows)
    return url


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[tuple[App, Client]]:
    """keygate serving `database_url`, and a client holding a root key."""
    app = await App.start(Settings(listen="127.0.0.1:0"), database_url)
    async with connect(app) as client:
        yield app, client
    await stop_within(app, STOP_SECONDS)


async def test_the_cli_imports_a_sqlite_flowise_into_a_serving_keygate_and_each_key_is_decided_as_flowise_did(
        flowise: Flowise, sqlite_file: Path, served: tuple[App, Client], database_url: str) -> None:
    _, client = served
    assert await answer(client, flowise.prod, "chatflows:view") == Code.KEY_NOT_FOUND  # remembered as unknown
    before = sqlite_file.read_bytes()
    done = await asyncio.to_thread(run_import, "--source", str(sqlite_file), "--database-url", database_url)
    assert done.returncode == 3, done.stderr  # ran, but refused keys and restrictions left to Flowise
    assert_reported(done.stdout, flowise)
    assert "Flowise unchanged: 1 flow(s) bound in keygate keep Flowise's own apikeyid" in done.stdout
    assert_no_secret(flowise.keys, done.stdout, done.stderr, stored=await everything_stored(database_url))
    assert sqlite_file.read_bytes() == before  # read-only without --clear-flowise-bindings

    async with asyncio.timeout(5):  # the import's commit reaches the serving keygate as a notification
        while await answer(client, flowise.prod, "chatflows:view") != Code.OK:
            await asyncio.sleep(0.05)
    await assert_decided_as_flowise_did(client, flowise)


def test_a_second_cli_import_changes_nothing_and_says_so(
        flowise: Flowise, sqlite_file: Path, database_url: str) -> None:
    first = run_import("--source", str(sqlite_file), "--database-url", database_url)
    assert first.returncode == 3, first.stderr
    stored = asyncio.run(counts(database_url))
    again = run_import("--source", str(sqlite_file), "--database-url", database_url)
    assert again.returncode == 3, again.stderr
    assert "keys: 0 imported, 3 already in keygate, 5 refused; flow restrictions: 0 bound, 1 already bound" \
        in again.stdout
    for key in flowise.imported:
        assert f"key {key.id} {key.name!r} workspace {key.workspace}: already in keygate" in again.stdout
    assert asyncio.run(counts(database_url)) == stored  # not even an audit row


def test_the_dry_run_reports_the_same_and_writes_nothing_anywhere(
        flowise: Flowise, sqlite_file: Path, database_url: str) -> None:
    before = sqlite_file.read_bytes()
    empty = asyncio.run(counts(database_url))
    dry = run_import("--source", str(sqlite_file), "--database-url", database_url, "--dry-run",
                     "--clear-flowise-bindings")
    assert dry.returncode == 3, dry.stderr
    assert "(dry run: nothing written)" in dry.stdout
    assert_reported(dry.stdout, flowise, dry=True)
    assert "Flowise: would clear apikeyid on 1 flow(s) bound in keygate" in dry.stdout
    assert_no_secret(flowise.keys, dry.stdout, dry.stderr)
    assert asyncio.run(counts(database_url)) == empty
    assert sqlite_file.read_bytes() == before


def test_clearing_flowise_restrictions_touches_only_the_flows_now_bound_in_keygate(
        flowise: Flowise, sqlite_file: Path, database_url: str) -> None:
    before = flowise_restrictions(sqlite_file)
    done = run_import("--source", str(sqlite_file), "--database-url", database_url, "--clear-flowise-bindings")
    assert done.returncode == 3, done.stderr
    assert "Flowise: cleared apikeyid on 1 flow(s) bound in keygate" in done.stdout
    assert flowise_restrictions(sqlite_file) == {**before, flowise.bound.id: None}
    # Keys and flows left to Flowise keep its own restriction: it still refuses other keys there.
    again = run_import("--source", str(sqlite_file), "--database-url", database_url, "--clear-flowise-bindings")
    assert "Flowise: cleared apikeyid on 0 flow(s)" in again.stdout and "0 bound, 0 already bound" in again.stdout


def test_bad_sources_are_one_line_errors(tmp_path: Path, database_url: str) -> None:
    not_flowise = tmp_path / "other.sqlite"
    sqlite3.connect(not_flowise).close()
    for source, says in ((str(tmp_path / "missing.sqlite"), "is not a file"),
                         (str(not_flowise), "no apikey table"),
                         ("mysql://u@localhost/flowise", "MySQL and MariaDB are not supported"),
                         ("postgresql://flowise:hunter2@127.0.0.1:1/flowise", "cannot connect")):
        done = run_import("--source", source, "--database-url", database_url)
        assert done.returncode == 1 and says in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "hunter2" not in done.stderr, done.stderr


async def test_importing_a_postgres_flowise_into_a_running_keygate(
        flowise: Flowise, flowise_pg: str, served: tuple[App, Client], database_url: str,
        db: asyncpg.Connection) -> None:
    app, client = served
    source = open_source(flowise_pg, DatabaseSettings())
    report = await import_flowise(app.store, source, Catalog.build(), KeyFormat(), clear_bindings=True)
    assert_reported("\n".join(report.lines()), flowise)
    assert report.cleared == 1
    await assert_decided_as_flowise_did(client, flowise)  # the running server's cache took the new keys
    conn = await asyncpg.connect(flowise_pg)
    try:
        left = dict(await conn.fetch('SELECT id::text, apikeyid FROM chat_flow WHERE apikeyid IS NOT NULL'))
    finally:
        await conn.close()
    assert left == {flowise.on_refused.id: flowise.unknown.id, flowise.elsewhere.id: flowise.prod.id,
                    flowise.dangling.id: flowise.dangling.apikey_id}

    audit = await db.fetch("SELECT * FROM audit_events WHERE request_id = $1 ORDER BY id", report.run_id)
    assert [(r["action"], r["actor_key_id"], r["target_key_id"], r["resource"]) for r in audit] == [
        *[("ImportKey", None, uuid.UUID(k.id), "") for k in sorted(flowise.imported, key=lambda k: k.id)],
        ("ImportBinding", None, uuid.UUID(flowise.prod.id), f"chatflows/{flowise.bound.id}"),
        ("ImportFlowise", None, None, ""),
    ]
    assert "keys: 3 imported, 0 already in keygate, 5 refused" in audit[-1]["reason"]
    assert_no_secret(flowise.keys, "\n".join(report.lines()), stored=await everything_stored(database_url))

    stored = await counts(database_url)
    again = await import_flowise(app.store, source, Catalog.build(), KeyFormat())
    assert not again.changed and len(again.present) == 3 and not again.bound_before  # cleared in Flowise
    assert await counts(database_url) == stored


async def test_a_dry_run_against_postgres_writes_nothing(flowise: Flowise, flowise_pg: str,
                                                         database_url: str) -> None:
    store = await Store.connect(database_url)
    try:
        report = await import_flowise(store, open_source(flowise_pg, DatabaseSettings()), Catalog.build(),
                                      KeyFormat(), dry_run=True)
    finally:
        await store.close()
    assert len(report.imported) == 3 and not report.run_id
    assert set((await counts(database_url)).values()) == {0}


class TestNoKeyMaterialEscapes:
    """Keys of any printable shape, in names and ids too: never in the report, the audit trail or storage."""

    printable = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=16, max_size=64)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(secrets=st.lists(printable, min_size=1, max_size=3, unique=True),
           names=st.lists(st.text(min_size=1, max_size=30), min_size=3, max_size=3), leak_name=st.booleans())
    def test_property(self, postgres: Postgres, tmp_path_factory: pytest.TempPathFactory, secrets: list[str],
                      names: list[str], leak_name: bool) -> None:
        keys = [Key(f"{name}{secret if leak_name else ''}", WS_A, ["chatflows:view"], api_key=secret)
                for secret, name in zip(secrets, names, strict=False)]
        path = sqlite_flowise(tmp_path_factory.mktemp("flowise") / "database.sqlite", keys, [Flow(WS_A, keys[0].id)])

        async def example() -> tuple[Report, str]:
            url = await postgres.fresh_database()
            store = await Store.connect(url)
            try:
                report = await import_flowise(store, open_source(str(path), DatabaseSettings()), Catalog.build(),
                                              KeyFormat())
            finally:
                await store.close()
            return report, await everything_stored(url)

        report, stored = asyncio.run(example())
        assert_no_secret(keys, "\n".join(report.lines()), repr(report), stored=stored)


async def test_a_flowise_3_0_database_grants_what_flowise_gave_keys_before_their_permissions_column(
        tmp_path: Path, served: tuple[App, Client]) -> None:
    app, client = served
    old = Key("From 3.0", WS_A, [])
    path = sqlite_flowise(tmp_path / "database.sqlite", [old], [], flowise_3_0=True)
    report = await import_flowise(app.store, open_source(str(path), DatabaseSettings()), Catalog.build(),
                                  KeyFormat())
    assert report.complete and [k.key_id for k in report.imported] == [uuid.UUID(old.id)]
    assert await answer(client, old, "documentStores:upsert-config") == Code.OK
    assert await answer(client, old, "credentials:share") == Code.PERMISSION_DENIED  # not in that list
