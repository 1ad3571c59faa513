"""Apply the numbered migrations in keygate.migrations, in order, each exactly once.

A migration is a SQL file (`0001_keys.sql`) or, where it needs keygate's own rules such as the
catalog's spelling of resources, a Python module (`0002_canonical_resources.py`) with
`async def apply(conn, catalog)`. Each runs in its own transaction with its bookkeeping row.
The whole run holds a PostgreSQL advisory lock, so servers starting together take turns:
the first applies what is missing, the others then find nothing to do.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from ..domain.permissions import Catalog

log = structlog.get_logger(__name__)

# An arbitrary constant that names "keygate migrations" among advisory locks.
_LOCK_ID = 0x6B657967_6174650
_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.(sql|py)\Z")

Apply = Callable[[asyncpg.Connection, Catalog], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Apply

    @classmethod
    def from_sql(cls, version: int, name: str, text: str) -> Migration:
        async def apply(conn: asyncpg.Connection, _catalog: Catalog) -> None:
            await conn.execute(text)

        return cls(version, name, apply)


def _python(name: str) -> Apply:
    module = importlib.import_module(f"keygate.migrations.{name.removesuffix('.py')}")
    return module.apply


def available() -> list[Migration]:
    """The shipped migrations, sorted by their number."""
    found = []
    for entry in resources.files("keygate.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            version = int(match.group(1))
            if match.group(2) == "sql":
                found.append(Migration.from_sql(version, entry.name, entry.read_text()))
            else:
                found.append(Migration(version, entry.name, _python(entry.name)))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, catalog: Catalog) -> list[str]:
    """Apply what is missing; return the names applied by this call."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        # Created only when missing: CREATE TABLE IF NOT EXISTS needs the CREATE privilege on the schema even
        # when the table is there, which a role that only serves (an owner ran `keygate migrate`) lacks.
        if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            await conn.execute(
                """CREATE TABLE schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_time timestamptz NOT NULL DEFAULT now())"""
            )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in available():
            if migration.version in done:
                continue
            async with conn.transaction():
                await migration.apply(conn, catalog)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
                )
            log.info("migration_applied", migration=migration.name)
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now
