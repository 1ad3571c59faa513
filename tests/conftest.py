"""Shared fixtures: one real PostgreSQL per test session (pgserver), a fresh database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

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

    async def fresh_database(self) -> str:
        name = f"test_{os.getpid()}_{next(_numbers)}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        finally:
            await conn.close()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    pg = Postgres(server)
    server.psql(f"CREATE DATABASE {TEMPLATE};")
    import asyncio

    from keygate.store.postgres import Store

    async def migrate_template() -> None:
        store = await Store.connect(pg.url(TEMPLATE))
        await store.migrate()
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
