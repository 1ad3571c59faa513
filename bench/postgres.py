"""A dedicated, throw-away PostgreSQL for one benchmark run (the `pgserver` wheel).

Its data directory sits under a `tempfile.mkdtemp()` directory on purpose: as root,
pgserver runs PostgreSQL as another user and opens up the parent directories for it,
which must not happen to the caller's tree or to pytest's 0700 temp root.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from keygate.domain.permissions import Catalog
from keygate.store.postgres import Store

if TYPE_CHECKING:
    from pgserver import PostgresServer


class Postgres:
    def __init__(self, server: PostgresServer) -> None:
        self._server = server

    def url(self, database: str = "postgres") -> str:
        return self._server.get_uri(database)

    def create_database(self, name: str, *, migrate: bool = True) -> str:
        """A new database, with keygate's migrations applied unless told otherwise; returns its URL."""

        async def create() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            if migrate:
                store = await Store.connect(self.url(name))
                try:
                    await store.migrate(Catalog.build())
                finally:
                    await store.close()

        asyncio.run(create())
        return self.url(name)

    @property
    def pid(self) -> int | None:
        return self._server.get_pid()

    def version(self) -> str:
        async def query() -> str:
            conn = await asyncpg.connect(self.url())
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        return asyncio.run(query())


@contextmanager
def embedded(root: Path) -> Iterator[Postgres]:
    """Start PostgreSQL in `root/data`; stop it and delete its files on the way out, whatever happens."""
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pgserver  # imported late: it warns on import without XDG_RUNTIME_DIR

    server = pgserver.get_server(root / "data", cleanup_mode="delete")
    try:
        yield Postgres(server)
    finally:
        server.cleanup()
