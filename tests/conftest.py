"""Shared fixtures: one real PostgreSQL per test session (pgserver), a fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pgserver
import pytest

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

TEMPLATE = "keygate_template"
_numbers = itertools.count()


class Postgres:
    """The session's server; `fresh_database()` clones a migrated template in a few milliseconds."""

    def __init__(self, server: pgserver.PostgresServer) -> None:
        self.server = server

    def url(self, database: str = "postgres") -> str:
        return self.server.get_uri(database)

    async def fresh_database(self, template: str = TEMPLATE) -> str:
        """A new database copied from `template`: keygate's migrated one, or `template0` for an empty one."""
        name = f"test_{os.getpid()}_{next(_numbers)}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
        finally:
            await conn.close()
        return self.url(name)


@pytest.fixture(scope="session")
def pg_dirs() -> Iterator[Callable[[str], Path]]:
    """Directories for PostgreSQL data, outside pytest's temp tree.

    Under root, pgserver runs PostgreSQL as the `postgres` user and opens up the parent
    directories for it; pytest resets its own temp root to mode 0700 at every session
    start, which would lock that user out of any data directory beneath it.
    """
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"keygate-test-{name}-")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(pg_dirs: Callable[[str], Path]) -> Iterator[Postgres]:
    server = pgserver.get_server(pg_dirs("pg") / "data", cleanup_mode="delete")
    pg = Postgres(server)
    server.psql(f"CREATE DATABASE {TEMPLATE};")
    import asyncio

    from keygate.domain.permissions import Catalog
    from keygate.store.postgres import Store

    async def migrate_template() -> None:
        store = await Store.connect(pg.url(TEMPLATE))
        await store.migrate(Catalog.build())
        await store.close()

    asyncio.run(migrate_template())
    yield pg
    server.cleanup()


@pytest.fixture
async def database_url(postgres: Postgres) -> str:
    return await postgres.fresh_database()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for looking behind the API."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()
