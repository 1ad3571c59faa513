"""Migrations: numbered SQL files applied in order, each exactly once, under an advisory lock.

Each test starts from an EMPTY database (the shared fixtures hand out migrated ones), runs
keygate.store.postgres.Store.migrate against it, and reads schema_migrations and the catalog
behind its back. Concurrency is forced, not hoped for: the test holds the migration lock
itself, waits until both migrators are queued on it, then lets them go.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg
import pytest

from keygate.domain.permissions import Catalog
from keygate.store import migrations
from keygate.store.migrations import Migration, available
from keygate.store.postgres import Store

if TYPE_CHECKING:
    from ..conftest import Postgres

_numbers = itertools.count()
KEYGATE_TABLES = {"api_keys", "key_secrets", "resource_bindings", "audit_events"}
MIGRATE_SCRIPT = """
import asyncio, json, sys
from keygate.domain.permissions import Catalog
from keygate.store.postgres import Store

async def main(url):
    store = await Store.connect(url)
    try:
        print(json.dumps(await store.migrate(Catalog.build())))
    finally:
        await store.close()

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture
async def empty_url(postgres: Postgres) -> AsyncIterator[str]:
    name = f"empty_{os.getpid()}_{next(_numbers)}"
    admin = await asyncpg.connect(postgres.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres.url(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(empty_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the empty database (this module's own `db`: the shared one is pre-migrated)."""
    conn = await asyncpg.connect(empty_url)
    yield conn
    await conn.close()


async def migrate_once(url: str) -> list[str]:
    store = await Store.connect(url)
    try:
        return await store.migrate(Catalog.build())
    finally:
        await store.close()


async def migrate_in_process(url: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MIGRATE_SCRIPT, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def recorded(db: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY applied_time, version")
    return [(r["version"], r["name"]) for r in rows]


async def tables(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


def shipped() -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in available()]


def test_shipped_migrations_are_numbered_files_in_order() -> None:
    found = available()
    assert found, "no migration files were found in keygate.migrations"
    versions = [m.version for m in found]
    assert versions == sorted(set(versions))
    assert found[0].name == "0001_keys.sql"
    assert all(m.name.startswith(f"{m.version:04d}_") and m.name.endswith((".sql", ".py")) for m in found)


async def test_first_run_applies_every_file_in_order_and_records_each_once(
    empty_url: str, db: asyncpg.Connection
) -> None:
    assert "schema_migrations" not in await tables(db)

    applied = await migrate_once(empty_url)

    assert applied == [m.name for m in available()]
    assert await recorded(db) == shipped()
    assert KEYGATE_TABLES | {"schema_migrations"} <= await tables(db)


async def test_second_run_applies_nothing(empty_url: str, db: asyncpg.Connection) -> None:
    await migrate_once(empty_url)
    before = await db.fetch("SELECT version, name, applied_time FROM schema_migrations ORDER BY version")

    assert await migrate_once(empty_url) == []

    after = await db.fetch("SELECT version, name, applied_time FROM schema_migrations ORDER BY version")
    assert after == before


async def test_migrated_schema_survives_a_second_run_with_its_data(empty_url: str, db: asyncpg.Connection) -> None:
    """Re-running must not re-execute a file (CREATE TABLE would fail, or worse, a data step would repeat)."""
    await migrate_once(empty_url)
    await db.execute("INSERT INTO audit_events (workspace_id, action, outcome) VALUES ('ws1', 'CreateKey', 'OK')")

    await migrate_once(empty_url)

    assert await db.fetchval("SELECT count(*) FROM audit_events") == 1


async def test_upgrade_applies_only_the_new_files_in_number_order(
    empty_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later release ships two files, where the second needs what the first made: only they run, in order."""
    await migrate_once(empty_url)
    base = available()
    first, second = base[-1].version + 1, base[-1].version + 2
    newer = [
        Migration.from_sql(second, f"{second:04d}_index_labels.sql",
                           "CREATE INDEX key_labels_label ON key_labels (label);"),
        Migration.from_sql(first, f"{first:04d}_labels.sql",
                           "CREATE TABLE key_labels (key_id uuid REFERENCES api_keys (id), label text);"),
    ]
    monkeypatch.setattr(migrations, "available", lambda: sorted([*base, *newer], key=lambda m: m.version))

    applied = await migrate_once(empty_url)

    assert applied == [f"{first:04d}_labels.sql", f"{second:04d}_index_labels.sql"]
    assert await recorded(db) == [*shipped(), (first, f"{first:04d}_labels.sql"),
                                  (second, f"{second:04d}_index_labels.sql")]
    assert await db.fetchval("SELECT to_regclass('key_labels_label') IS NOT NULL")


async def test_a_failing_file_is_neither_half_applied_nor_recorded(
    empty_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_once(empty_url)
    base = available()
    broken = Migration.from_sql(101, "0101_broken.sql", "CREATE TABLE half_done (x int); SELECT no_such_function();")
    monkeypatch.setattr(migrations, "available", lambda: [*base, broken])

    with pytest.raises(asyncpg.PostgresError):
        await migrate_once(empty_url)

    assert await recorded(db) == shipped()
    assert "half_done" not in await tables(db)
    # The lock was released: a fixed file then goes through.
    fixed = Migration.from_sql(101, "0101_fixed.sql", "CREATE TABLE half_done (x int);")
    monkeypatch.setattr(migrations, "available", lambda: [*base, fixed])
    assert await migrate_once(empty_url) == ["0101_fixed.sql"]


async def waiting_for_lock(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        """SELECT count(*) FROM pg_locks
           WHERE locktype = 'advisory' AND NOT granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
    )


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


MIGRATORS = {"two Stores in one event loop": migrate_once, "two processes": migrate_in_process}


@pytest.mark.parametrize("migrator", list(MIGRATORS.values()), ids=list(MIGRATORS))
async def test_two_migrators_at_once_both_succeed_and_apply_each_file_once(
    empty_url: str, db: asyncpg.Connection, migrator: Callable[[str], Awaitable[list[str]]]
) -> None:
    # Hold the migration lock, so both are surely inside migrate() at the same time.
    await db.execute("SELECT pg_advisory_lock($1)", migrations._LOCK_ID)
    runs = asyncio.gather(migrator(empty_url), migrator(empty_url))
    try:
        await poll(lambda: _at_least(waiting_for_lock(db), 2))
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", migrations._LOCK_ID)

    first, second = await runs

    assert sorted([first, second], key=len) == [[], [m.name for m in available()]]
    assert await recorded(db) == shipped()
    assert await db.fetchval("SELECT count(*) FROM schema_migrations") == len(available())


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


async def test_two_migrators_without_help_from_the_test(empty_url: str, db: asyncpg.Connection) -> None:
    """Plain asyncio.gather, as two servers starting together would do it."""
    results = await asyncio.gather(*(migrate_once(empty_url) for _ in range(4)))

    assert sorted(len(r) for r in results) == [0, 0, 0, len(available())]
    assert await recorded(db) == shipped()


async def test_stored_resources_are_made_canonical_and_bindings_merged(
    empty_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data written before the resource model (0002) is rewritten into the one spelling every door uses."""
    shipped_all = available()
    monkeypatch.setattr(migrations, "available", lambda: shipped_all[:1])
    await migrate_once(empty_url)
    flow = "9b2c1d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e"
    key_id = await db.fetchval(
        """INSERT INTO api_keys (id, workspace_id, name, permissions, resources, display)
           VALUES (gen_random_uuid(), 'ws1', 'k', '{predictions:create}', $1, 'fl_x...y') RETURNING id""",
        [f"Chatflows/{flow.upper()}", f"chatflows/{flow}", "TOOLS", "nosuch/x"])
    for resource, actions in ((f"CHATFLOWS/{flow.replace('-', '')}", ["predictions:create"]),
                              (f"chatflows/{flow}", ["chatflows:update"]), ("nosuch/Y", ["nosuch:use"])):
        await db.execute("INSERT INTO resource_bindings (workspace_id, resource, key_id, actions) VALUES "
                         "('ws1', $1, $2, $3)", resource, key_id, actions)
    monkeypatch.setattr(migrations, "available", lambda: shipped_all)

    await migrate_once(empty_url)

    assert await db.fetchval("SELECT resources FROM api_keys WHERE id = $1", key_id) == [
        f"chatflows/{flow}", "tools/*", "nosuch/x"]
    bindings = await db.fetch("SELECT resource, actions FROM resource_bindings ORDER BY resource")
    assert [(b["resource"], b["actions"]) for b in bindings] == [
        (f"chatflows/{flow}", ["chatflows:update", "predictions:create"]), ("nosuch/Y", ["nosuch:use"])]
