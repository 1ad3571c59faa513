"""Reading a Flowise database (its SQLite file or its PostgreSQL), and clearing its flow restrictions.

Only two of Flowise's tables are touched: `apikey` (read) and `chat_flow` (read; `apikeyid` set to
NULL when the operator asks). The layout is Flowise 3.1.4's (its migrations); a Flowise 3.0 database
without `apikey.permissions` reads as the migration that added the column would have filled it. A
database without `apikey.workspaceId` (Flowise before 3) is refused: its keys belong to no workspace.

The SQLite file is opened read-only unless restrictions are to be cleared. Errors name the source as
`describe` renders it, never with a password, and never quote a row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..domain.errors import InvalidArgument, KeygateError, Unavailable
from ..domain.flowise import FlowiseFlow, FlowiseKey
from .postgres import DatabaseSettings

REQUIRED_COLUMNS = ("id", "apiKey", "apiSecret", "keyName", "workspaceId")
_POSTGRES_SCHEMES = ("postgres", "postgresql")


@dataclass(frozen=True, slots=True)
class FlowiseData:
    keys: list[FlowiseKey]
    flows: list[FlowiseFlow]  # those whose apikeyid is set


class FlowiseSource(Protocol):
    def describe(self) -> str: ...

    async def read(self) -> FlowiseData: ...

    async def clear(self, flows: Sequence[tuple[str, str]]) -> int:
        """Set `apikeyid` to NULL on each (flow id, apikeyid) still bound to that key; the rows changed."""
        ...


def open_source(source: str, settings: DatabaseSettings) -> FlowiseSource:
    """The Flowise database `source` names: a postgresql:// URL or the path of a SQLite file."""
    scheme = urlsplit(source).scheme
    if scheme in _POSTGRES_SCHEMES:
        return PostgresSource(source, settings)
    if scheme in ("mysql", "mariadb"):
        raise InvalidArgument("--source", "MySQL and MariaDB are not supported; give a SQLite file or a "
                                          "postgresql:// URL")
    path = Path(source)
    if not path.is_file():
        raise InvalidArgument("--source", f"{path} is not a file (give Flowise's database.sqlite, or a "
                                          "postgresql:// URL)")
    return SqliteSource(path, settings)


def _missing(columns: set[str]) -> None:
    if not columns:
        raise InvalidArgument("--source", "has no apikey table: not a Flowise 3 database")
    if "workspaceId" not in columns:
        raise InvalidArgument("--source", "apikey has no workspaceId: Flowise before 3.0 is not supported")
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise InvalidArgument("--source", f"apikey lacks {', '.join(absent)}: not a Flowise 3 layout")


def _key(row: Sequence[object], with_permissions: bool) -> FlowiseKey:
    id_, api_key, api_secret, name, workspace, permissions = row
    return FlowiseKey(str(id_), str(api_key), str(api_secret or ""), str(name or ""),
                      None if not with_permissions else str(permissions), None if workspace is None else str(workspace))


def _keys_query(with_permissions: bool, cast: str) -> str:
    permissions = f'"permissions"{cast}' if with_permissions else "NULL"
    return (f'SELECT "id"{cast}, "apiKey", "apiSecret", "keyName", "workspaceId"{cast}, {permissions} '
            'FROM "apikey" ORDER BY "id"')


def _flows_query(cast: str) -> str:
    return (f'SELECT "id"{cast}, "apikeyid", "workspaceId"{cast} FROM "chat_flow" '
            "WHERE \"apikeyid\" IS NOT NULL AND \"apikeyid\" <> '' ORDER BY \"id\"")


class SqliteSource:
    """Flowise's default database: `~/.flowise/database.sqlite` (DATABASE_PATH)."""

    def __init__(self, path: Path, settings: DatabaseSettings) -> None:
        self._path = path
        self._timeout = settings.statement_timeout  # waiting for Flowise's own write lock

    def describe(self) -> str:
        return f"sqlite:{self._path}"

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        mode = "rw" if write else "ro"
        try:
            return sqlite3.connect(f"{self._path.resolve().as_uri()}?mode={mode}", uri=True, timeout=self._timeout)
        except sqlite3.Error as exc:
            raise InvalidArgument("--source", f"cannot open {self._path}: {exc}") from None

    def _read(self) -> FlowiseData:
        conn = self._connect(write=False)
        try:
            columns = {r[1] for r in conn.execute('PRAGMA table_info("apikey")')}
            _missing(columns)
            with_permissions = "permissions" in columns
            keys = [_key(r, with_permissions) for r in conn.execute(_keys_query(with_permissions, ""))]
            flows = [FlowiseFlow(str(i), str(k), None if w is None else str(w))
                     for i, k, w in conn.execute(_flows_query(""))]
        except sqlite3.DatabaseError as exc:
            raise InvalidArgument("--source", f"cannot read {self._path} as a Flowise database: {exc}") from None
        finally:
            conn.close()
        return FlowiseData(keys, flows)

    def _clear(self, flows: Sequence[tuple[str, str]]) -> int:
        conn = self._connect(write=True)
        try:
            with conn:
                return sum(conn.execute('UPDATE "chat_flow" SET "apikeyid" = NULL WHERE "id" = ? AND "apikeyid" = ?',
                                        flow).rowcount for flow in flows)
        except sqlite3.Error as exc:
            raise KeygateError(f"cannot clear Flowise's flow restrictions in {self._path}: {exc}") from None
        finally:
            conn.close()

    async def read(self) -> FlowiseData:
        return await asyncio.to_thread(self._read)

    async def clear(self, flows: Sequence[tuple[str, str]]) -> int:
        return await asyncio.to_thread(self._clear, flows)


class PostgresSource:
    """Flowise on PostgreSQL (DATABASE_TYPE=postgres). A password is better given as PGPASSWORD."""

    def __init__(self, url: str, settings: DatabaseSettings) -> None:
        self._url = url
        self._settings = settings

    def describe(self) -> str:
        """The URL without its password."""
        parts = urlsplit(self._url)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self._url, timeout=self._settings.connect_timeout,
                                         command_timeout=self._settings.statement_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unavailable(f"cannot connect to Flowise's database {self.describe()} "
                              f"({type(exc).__name__})") from None

    async def read(self) -> FlowiseData:
        conn = await self._connect()
        try:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                columns = {r["column_name"] for r in await conn.fetch(
                    """SELECT column_name FROM information_schema.columns
                       WHERE table_name = 'apikey' AND table_schema = current_schema()""")}
                _missing(columns)
                with_permissions = "permissions" in columns
                keys = [_key(tuple(r), with_permissions)
                        for r in await conn.fetch(_keys_query(with_permissions, "::text"))]
                flows = [FlowiseFlow(r[0], r[1], r[2]) for r in await conn.fetch(_flows_query("::text"))]
        except asyncpg.PostgresError as exc:
            raise InvalidArgument("--source", f"cannot read {self.describe()} as a Flowise database: "
                                              f"{type(exc).__name__}") from None
        finally:
            await conn.close(timeout=self._settings.connect_timeout)
        return FlowiseData(keys, flows)

    async def clear(self, flows: Sequence[tuple[str, str]]) -> int:
        conn = await self._connect()
        try:
            async with conn.transaction():
                cleared = 0
                for flow_id, apikey_id in flows:
                    status = await conn.execute(
                        'UPDATE "chat_flow" SET "apikeyid" = NULL WHERE "id"::text = $1 AND "apikeyid" = $2',
                        flow_id, apikey_id)
                    cleared += int(status.split()[-1])
                return cleared
        except asyncpg.PostgresError as exc:
            raise KeygateError(f"cannot clear Flowise's flow restrictions in {self.describe()}: "
                               f"{type(exc).__name__}") from None
        finally:
            await conn.close(timeout=self._settings.connect_timeout)
