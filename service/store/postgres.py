"""All of keygate's SQL, implementing the interfaces of store/interface.py. `Store` hands out a
`Reader` (read-only queries on a connection) for reads, and a `Tx` (reads and writes, in a transaction)
only inside `transaction()`.

Connection failures surface as `Unavailable`, so callers fail closed with a status
that says "retry", never an INTERNAL error carrying driver text.

Every wait on the database is bounded (`DatabaseSettings`): connecting, acquiring a pooled
connection, each statement, and a Check's lookup as a whole. A timeout counts exactly like an
unreachable database. Once one is seen, the store is known unreachable: every use fails at once
(no caller waits for a timeout again) until a single background probe gets an answer. Each change
of that verdict is told to `on_reachability` callbacks (health follows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from ..domain import changes
from ..domain.decision import Binding
from ..domain.errors import InvalidArgument, Unavailable
from ..domain.keys import fingerprint
from ..domain.permissions import Catalog
from ..domain.policy import KEY_FIELDS, KeySpec, Kind
from ..domain.records import AuditEvent, AuditQuery, BindingRecord, KeyRecord
from . import interface, limits, migrations

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 0.5  # between two probes of an unreachable database
PROBE = "SELECT true AS reachable"  # told apart from the change listener's PING in pg_stat_activity
# The change listener's round trip, answering the primary's WAL insert position: every commit whose NOTIFY
# arrived before the ping was sent lies below it (a replica that has replayed it has them all).
PING = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint AS position"
# What a replica has replayed: read BEFORE a lookup's query, whose snapshot is then at least as new. NULL on
# a primary (a read URL that reaches one, e.g. after a failover): its insert position, it is current.
REPLAYED = """SELECT (COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_insert_lsn()) - '0/0')::bigint
              AS replayed"""
POOLERS = ("none", "pgbouncer")  # the first is the default


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    connect_timeout: float = 2.0  # seconds to open a connection (pool, change listener, migrations)
    acquire_timeout: float = 2.0  # seconds to wait for a pooled connection, and to hand it back (reset)
    statement_timeout: float = 5.0  # seconds any one statement may take
    lookup_timeout: float = 1.0  # seconds a Check's lookup may take as a whole: acquire and query
    # Where else to connect (README "Database topology"); not in repr: a URL may hold a password.
    read_url: str = field(default="", repr=False)  # replicas for the Check path's lookups; empty: none
    listen_url: str = field(default="", repr=False)  # direct, for LISTEN and migrations; empty: the main URL
    pooler: str = POOLERS[0]  # pgbouncer: the main URL is a transaction pooler (no named prepared statements)

    @property
    def statement_cache_size(self) -> int:
        """asyncpg's prepared statements per connection: none behind a transaction pooler, where the next
        transaction may run on another server connection (unnamed statements are parsed with each call)."""
        return 0 if self.pooler == "pgbouncer" else 100

# The database answered and refused us: a wrong password, an unknown role, no pg_hba.conf entry (class 28),
# a database that does not exist. While serving (a password rotated under running pods) it is an outage
# like the others below; at start it is a setting to fix, said in one line (`_refusal_names`).
_REFUSED = (asyncpg.exceptions.InvalidAuthorizationSpecificationError, asyncpg.exceptions.InvalidCatalogNameError)
# The setting that named each store's URL, for those lines.
_SETTINGS = {"database": "DATABASE_URL", "replica": "KEYGATE_DATABASE_READ_URL"}

# Errors that mean "the database is not there (or not for us, right now)", as opposed to
# "the query was wrong": connection failures, a server shutting down or refusing connections,
# too many connections, and a pooled connection the server killed mid-use.
_UNREACHABLE = (
    *_REFUSED,
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a demoted primary (or a replica): not the database to write to
)
# After these a connection is terminated, never reset or rolled back: either would wait on the server
# again (asyncpg first waits for the cancellation of a timed-out statement). The server rolls back.
_ABANDON = (*_UNREACHABLE, asyncio.CancelledError)

# The last column: when the retired secrets still in their grace period stop (each rotation caps the older
# ones at its own end, so the latest end is the most recently retired secret's). clock_timestamp(), not
# now(): a secret retired with grace 0 inside this very transaction has already stopped.
# api_keys columns are named as the KeySpec fields; the credits are a row of their own (store/limits.py)
_COLUMN_FIELDS = tuple(f for f in KEY_FIELDS if f.kind is not Kind.CREDITS)
_SPEC_COLUMNS = tuple(f.name for f in _COLUMN_FIELDS)
_KEY_COLUMNS = f"""id, {", ".join(_SPEC_COLUMNS)}, {limits.CREDITS_COLUMN}, display,
    create_time, update_time, last_used_time, usage_count, created_by, version,
    (SELECT max(r.expire_time) FROM key_secrets r WHERE r.key_id = api_keys.id AND r.expire_time > clock_timestamp())
        AS previous_secret_expire_time"""


# What the pool hands out: a connection, or (as the stubs type it) a proxy standing for one.
_Conn = asyncpg.Connection | PoolConnectionProxy


def _returned(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a write's RETURNING gives: always one, for a row just inserted or locked by the caller."""
    if row is None:
        raise RuntimeError("a write returned no row: its key was not locked first")
    return row


def _error_kind(exc: BaseException) -> str:
    """How a call failed to reach the database, for metrics: timeout, connection_lost or other."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError
                  | asyncpg.exceptions.ReadOnlySQLTransactionError):
        return "connection_lost"  # read-only: connected to a server that is no longer the primary
    return "other"


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"the database is unreachable ({type(exc).__name__}); retry shortly")


def _first_line(exc: BaseException) -> str:
    """asyncpg's message without the DETAIL and HINT lines it may add."""
    return str(exc).partition("\n")[0]


@contextmanager
def _refusal_names(setting: str) -> Iterator[None]:
    """At start: a database that refuses us, or a URL asyncpg cannot use, is InvalidArgument naming the setting
    (one line, not "unreachable; retry shortly" nor a traceback). The server's reason names a role, a database
    or a host, never the password; asyncpg's own (ClientConfigurationError: an sslmode, a missing root
    certificate) names a parameter or a file. A URL its parser chokes on otherwise (a ValueError, such as a
    port that is not a number) is not quoted: its text may be part of a password."""
    try:
        yield
    except _REFUSED as exc:
        raise InvalidArgument(setting, f"the database refused the connection: {_first_line(exc)}") from None
    except asyncpg.exceptions.ClientConfigurationError as exc:
        raise InvalidArgument(setting, f"cannot be used: {_first_line(exc)}") from None
    except ValueError:
        raise InvalidArgument(setting, "cannot be parsed: is each port a number, and is every /, :, @, ? or # in "
                                       "the password percent-encoded?") from None


@contextmanager
def _unreachable_is_unavailable() -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as exc:
        raise _unavailable(exc) from None


def _column_value(kind: Kind, value: Any) -> object:
    """A KeySpec value as the api_keys column takes it."""
    if kind is Kind.LIST:
        return list(value)
    if kind is Kind.RATE_LIMITS:
        return limits.encode_rate_limits(value)
    return json.dumps(dict(value)) if kind is Kind.MAP else value


def _spec_value(kind: Kind, value: Any) -> Any:
    """An api_keys column as the KeySpec holds it (arrays of cidr read back as their text)."""
    if kind is Kind.LIST:
        return tuple(str(v) for v in value)
    if kind is Kind.RATE_LIMITS:
        return limits.decode_rate_limits(value)
    if kind is Kind.CREDITS:
        return limits.decode_credits(value)
    return json.loads(value) if kind is Kind.MAP else value


def _spec_values(spec: KeySpec) -> list[object]:
    return [_column_value(f.kind, getattr(spec, f.name)) for f in _COLUMN_FIELDS]


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        spec=KeySpec(**{f.name: _spec_value(f.kind, row[f.name]) for f in KEY_FIELDS}),
        display=row["display"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        version=row["version"],
        created_by=row["created_by"],
        last_used_time=row["last_used_time"],
        usage_count=row["usage_count"],
        previous_secret_expire_time=row["previous_secret_expire_time"],
    )


def _binding(row: asyncpg.Record) -> BindingRecord:
    return BindingRecord(
        workspace_id=row["workspace_id"],
        resource=row["resource"],
        key_id=row["key_id"],
        actions=tuple(row["actions"]),
        create_time=row["create_time"],
        created_by=row["created_by"],
    )


class Reader:
    """Read-only queries on one connection: what `Store.read()` and `Store.lookup()` hand out.
    It has no write method, so a write through a read is a type error (and an AttributeError)."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn

    async def replayed(self) -> int:
        """The WAL position this server has replayed (a primary: written). Read before the queries whose
        answer it vouches for: each later statement's snapshot is at least that new."""
        return int(await self._conn.fetchval(REPLAYED))

    async def key_by_digest(self, digest: bytes) -> tuple[KeyRecord, datetime | None] | None:
        """The key a secret belongs to, with the secret's own expiry (set after rotation)."""
        row = await self._conn.fetchrow(
            f"""SELECT {_KEY_COLUMNS}, secret_expire_time FROM api_keys
                JOIN (SELECT key_id, expire_time AS secret_expire_time FROM key_secrets WHERE digest = $1) s
                  ON s.key_id = api_keys.id""",
            digest,
        )
        return None if row is None else (_key(row), row["secret_expire_time"])

    async def get_key(self, key_id: UUID) -> KeyRecord | None:
        return await self._get_key(key_id, "")

    async def _get_key(self, key_id: UUID, suffix: str) -> KeyRecord | None:
        row = await self._conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1{suffix}", key_id)
        return None if row is None else _key(row)

    async def list_keys(
        self, workspace_id: str | None, after: tuple[datetime, UUID] | None, limit: int,
        ids: list[UUID] | None = None,
    ) -> list[KeyRecord]:
        """Keys ordered by (create_time, id), after the cursor; every workspace when workspace_id is None,
        only `ids` when given."""
        rows = await self._conn.fetch(
            f"""SELECT {_KEY_COLUMNS} FROM api_keys
                WHERE ($1::text IS NULL OR workspace_id = $1)
                  AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3::uuid))
                  AND ($5::uuid[] IS NULL OR id = ANY($5))
                ORDER BY create_time, id LIMIT $4""",
            workspace_id,
            after[0] if after else None,
            after[1] if after else None,
            limit,
            ids,
        )
        return [_key(r) for r in rows]

    async def secret_owners(self, digests: Sequence[bytes]) -> dict[bytes, UUID]:
        """The key each of these digests belongs to, for those stored."""
        rows = await self._conn.fetch("SELECT digest, key_id FROM key_secrets WHERE digest = ANY($1::bytea[])",
                                      list(digests))
        return {bytes(r["digest"]): r["key_id"] for r in rows}

    async def existing_keys(self, key_ids: Sequence[UUID]) -> set[UUID]:
        rows = await self._conn.fetch("SELECT id FROM api_keys WHERE id = ANY($1::uuid[])", list(key_ids))
        return {r["id"] for r in rows}

    async def count_digests(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM key_secrets"))

    async def digests(self, batch: int = 10_000) -> AsyncIterator[list[bytes]]:
        """Every stored secret digest, in batches (for the cache's filter of known keys)."""
        async with self._conn.transaction(readonly=True):
            cursor = await self._conn.cursor("SELECT digest FROM key_secrets")
            while rows := await cursor.fetch(batch):
                yield [r["digest"] for r in rows]

    async def server_secret(self, name: str) -> bytes:
        """A secret the server keeps for itself (migrations create them), the same for every replica."""
        value = await self._conn.fetchval("SELECT value FROM server_secrets WHERE name = $1", name)
        if value is None:
            raise RuntimeError(f"server secret {name!r} is missing: run the migrations")
        return bytes(value)

    async def has_root_key(self) -> bool:
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys WHERE workspace_id = '')"))

    async def bindings_for_many(
        self, slots: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Binding, ...]]:
        """The bindings of each (workspace, resource) slot, in one query; a slot without any maps to ()."""
        rows = await self._conn.fetch(
            """SELECT b.workspace_id, b.resource, b.key_id, b.actions FROM resource_bindings b
               JOIN unnest($1::text[], $2::text[]) AS q (workspace_id, resource) USING (workspace_id, resource)""",
            [w for w, _ in slots], [r for _, r in slots],
        )
        found: dict[tuple[str, str], list[Binding]] = {slot: [] for slot in slots}
        for r in rows:
            found[(r["workspace_id"], r["resource"])].append(
                Binding(r["resource"], r["key_id"], tuple(r["actions"]), r["workspace_id"]))
        return {slot: tuple(bindings) for slot, bindings in found.items()}

    async def list_bindings(self, *, workspace_id: str | None, resource: str | None = None,
                            key_id: UUID | None = None) -> list[BindingRecord]:
        rows = await self._conn.fetch(
            """SELECT * FROM resource_bindings
               WHERE ($1::text IS NULL OR workspace_id = $1)
                 AND ($2::text IS NULL OR resource = $2)
                 AND ($3::uuid IS NULL OR key_id = $3)
               ORDER BY workspace_id, resource, create_time, key_id""",
            workspace_id, resource, key_id,
        )
        return [_binding(r) for r in rows]

    async def bindings_of_keys(self, key_ids: Sequence[UUID]) -> set[tuple[str, str, UUID]]:
        """(workspace, resource, key) of every binding of these keys."""
        rows = await self._conn.fetch(
            "SELECT workspace_id, resource, key_id FROM resource_bindings WHERE key_id = ANY($1::uuid[])",
            list(key_ids))
        return {(r["workspace_id"], r["resource"], r["key_id"]) for r in rows}

    async def list_audit(self, query: AuditQuery, before_id: int | None, limit: int) -> list[AuditEvent]:
        """Newest first."""
        rows = await self._conn.fetch(
            """SELECT * FROM audit_events
               WHERE ($1::text IS NULL OR workspace_id = $1)
                 AND ($2::uuid IS NULL OR target_key_id = $2)
                 AND ($3::uuid IS NULL OR actor_key_id = $3)
                 AND ($4 = '' OR action = $4)
                 AND ($5::timestamptz IS NULL OR event_time >= $5)
                 AND ($6::timestamptz IS NULL OR event_time < $6)
                 AND ($7::bigint IS NULL OR id < $7)
               ORDER BY id DESC LIMIT $8""",
            query.workspace_id, query.key_id, query.actor_key_id, query.action, query.start_time,
            query.end_time, before_id, limit,
        )
        return [
            AuditEvent(
                id=r["id"], event_time=r["event_time"], actor_key_id=r["actor_key_id"],
                workspace_id=r["workspace_id"], action=r["action"], outcome=r["outcome"],
                target_key_id=r["target_key_id"], resource=r["resource"],
                changed_fields=tuple(r["changed_fields"]), reason=r["reason"], request_id=r["request_id"],
            )
            for r in rows
        ]


class Tx(Reader):
    """Reads and writes on one connection, in a transaction: exists only inside `Store.transaction()`.

    Every write that can change a Check answer also NOTIFYs its change in the same
    transaction, so replicas hear of it exactly when it commits, and never of a rollback.
    """

    def __init__(self, conn: _Conn) -> None:
        super().__init__(conn)
        self.changes: list[changes.Change] = []

    async def _notify(self, change: changes.Change) -> None:
        await self._conn.execute("SELECT pg_notify($1, $2)", changes.CHANNEL, changes.encode(change, time.time()))
        self.changes.append(change)

    async def lock_key(self, key_id: UUID) -> KeyRecord | None:
        return await self._get_key(key_id, " FOR UPDATE")

    async def insert_key(self, key_id: UUID, spec: KeySpec, digest: bytes, display: str,
                         created_by: UUID | None) -> KeyRecord:
        columns = ("id", *_SPEC_COLUMNS, "display", "created_by")
        row = await self._conn.fetchrow(
            f"""INSERT INTO api_keys ({", ".join(columns)})
                VALUES ({", ".join(f"${i}" for i in range(1, len(columns) + 1))})
                RETURNING {_KEY_COLUMNS}""",
            key_id, *_spec_values(spec), display, created_by,
        )
        await self._conn.execute("INSERT INTO key_secrets (digest, key_id) VALUES ($1, $2)", digest, key_id)
        await self._notify(changes.KeyChanged(key_id, (fingerprint(digest),), workspace_id=spec.workspace_id))
        if spec.credits is None:
            return _key(_returned(row))
        await limits.set_credits(self._conn, key_id, spec.credits)
        return _key(_returned(await self._conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1",
                                                        key_id)))

    async def update_key(self, key_id: UUID, spec: KeySpec, changed: Sequence[str] = ()) -> KeyRecord:
        """`changed`: the fields the update changes. New rate limits start fresh windows; new credits a
        new balance (store/limits.py)."""
        if "rate_limits" in changed:
            await limits.reset_windows(self._conn, key_id)
        if "credits" in changed:
            await limits.set_credits(self._conn, key_id, spec.credits)
        settings = ", ".join(f"{column} = ${i}" for i, column in enumerate(_SPEC_COLUMNS, start=2))
        row = await self._conn.fetchrow(
            f"""UPDATE api_keys SET {settings}, update_time = now(), version = version + 1
                WHERE id = $1 RETURNING {_KEY_COLUMNS}""",
            key_id, *_spec_values(spec),
        )
        await self._notify(changes.KeyChanged(key_id, workspace_id=spec.workspace_id))
        return _key(_returned(row))

    async def delete_key(self, key_id: UUID) -> None:
        workspace = await self._conn.fetchval("DELETE FROM api_keys WHERE id = $1 RETURNING workspace_id", key_id)
        await self._notify(changes.KeyChanged(key_id, bindings_removed=True, workspace_id=workspace))

    async def replace_secret(self, key_id: UUID, digest: bytes, display: str,
                             old_secrets_expire: datetime) -> KeyRecord:
        """Add a new current secret; every older secret of the key stops at `old_secrets_expire` at the latest."""
        await self._conn.execute(
            """UPDATE key_secrets SET expire_time = LEAST(COALESCE(expire_time, $2), $2) WHERE key_id = $1""",
            key_id, old_secrets_expire,
        )
        await self._conn.execute("INSERT INTO key_secrets (digest, key_id) VALUES ($1, $2)", digest, key_id)
        row = await self._conn.fetchrow(
            f"""UPDATE api_keys SET display = $2, update_time = now(), version = version + 1
                WHERE id = $1 RETURNING {_KEY_COLUMNS}""",
            key_id, display,
        )
        record = _key(_returned(row))
        await self._notify(changes.KeyChanged(key_id, (fingerprint(digest),), workspace_id=record.spec.workspace_id))
        return record

    async def lock_imports(self) -> None:
        """Serialise imports until this transaction ends: two at once would both find a key absent."""
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('keygate-import'))")

    async def add_usage(self, usage: Mapping[UUID, tuple[int, datetime]]) -> None:
        """Add counts and move last_used_time forward; keys deleted meanwhile are skipped."""
        await self._conn.executemany(
            """UPDATE api_keys SET usage_count = usage_count + $2,
                   last_used_time = GREATEST(COALESCE(last_used_time, $3), $3)
               WHERE id = $1""",
            [(key_id, count, last) for key_id, (count, last) in usage.items()],
        )

    async def upsert_binding(self, workspace_id: str, resource: str, key_id: UUID, actions: tuple[str, ...],
                             created_by: UUID | None) -> BindingRecord:
        row = await self._conn.fetchrow(
            """INSERT INTO resource_bindings (workspace_id, resource, key_id, actions, created_by)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (workspace_id, resource, key_id) DO UPDATE SET actions = EXCLUDED.actions
               RETURNING *""",
            workspace_id, resource, key_id, list(actions), created_by,
        )
        await self._notify(changes.BindingChanged(workspace_id, resource))
        return _binding(_returned(row))

    async def delete_binding(self, workspace_id: str, resource: str, key_id: UUID) -> bool:
        status = await self._conn.execute(
            "DELETE FROM resource_bindings WHERE workspace_id = $1 AND resource = $2 AND key_id = $3",
            workspace_id, resource, key_id,
        )
        await self._notify(changes.BindingChanged(workspace_id, resource))
        return status != "DELETE 0"

    async def audit(self, event: AuditEvent) -> None:
        await self._conn.execute(
            """INSERT INTO audit_events (actor_key_id, workspace_id, action, outcome, target_key_id, resource,
                                         changed_fields, reason, request_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            event.actor_key_id, event.workspace_id, event.action, event.outcome, event.target_key_id,
            event.resource, list(event.changed_fields), event.reason, event.request_id,
        )


class Listening:
    """The change listener's dedicated connection, LISTENing."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def ping(self) -> int:
        """PING: PostgreSQL delivers every pending notification before it answers. Returns the primary's
        WAL insert position, past the commit of every change notified before the ping was sent."""
        return int(await self._conn.fetchval(PING))

    def close(self) -> None:
        self._conn.terminate()


class Store:
    """A connection pool, the ways to use it, and whether the database is known to be reachable."""

    def __init__(self, pool: asyncpg.Pool, url: str, settings: DatabaseSettings = DatabaseSettings(), *,
                 name: str = "database") -> None:
        self._pool = pool
        self._direct_url = settings.listen_url or url  # LISTEN and session advisory locks: never a pooler
        self.settings = settings
        self.name = name  # in log events: database_unreachable, replica_unreachable
        self._on_commit: list[Callable[[changes.Change], None]] = []
        self._on_reachability: list[Callable[[bool], None]] = []
        self._probe: asyncio.Task[None] | None = None  # running while the database is known unreachable
        self._verifying: asyncio.Task[None] | None = None  # a round trip `suspect` asked for
        # For metrics, read at scrape time.
        self.acquire_waits = 0  # acquisitions that found no idle connection
        self.acquire_timeouts = 0
        self.errors = dict.fromkeys(("timeout", "connection_lost", "other"), 0)  # by _error_kind

    def on_commit(self, callback: Callable[[changes.Change], None]) -> None:
        """Call `callback` with each change this process commits, before the transaction's caller
        continues: this process's own cache must not wait for its own NOTIFY to come back."""
        self._on_commit.append(callback)

    def on_reachability(self, callback: Callable[[bool], None]) -> None:
        """Call `callback` with `reachable` each time it changes (health follows it)."""
        self._on_reachability.append(callback)

    @classmethod
    async def connect(cls, url: str, settings: DatabaseSettings = DatabaseSettings(), *, min_size: int = 1,
                      max_size: int = 10, name: str = "database") -> Store:
        """`min_size=0` connects on first use: a replica that is down at start must not stop keygate."""
        with _unreachable_is_unavailable(), _refusal_names(_SETTINGS[name]):
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             timeout=settings.connect_timeout,
                                             command_timeout=settings.statement_timeout,
                                             statement_cache_size=settings.statement_cache_size)
            return cls(pool, url, settings, name=name)

    def pool_sizes(self) -> tuple[int, int, int]:
        """Connections in use, idle, and the pool's largest size."""
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        return size - idle, idle, self._pool.get_max_size()

    @property
    def reachable(self) -> bool:
        """False from the first failure to reach the database until a probe answers again."""
        return self._probe is None

    async def listen(self, on_change: Callable[[str], None], on_lost: Callable[[], None]) -> Listening:
        """A dedicated connection LISTENing for changes; `on_lost` fires if it closes.

        Outside the pool on purpose: a pooled connection could be reset or shared. On the direct URL:
        a transaction pooler would hand the LISTEN's session to others.
        """
        with _unreachable_is_unavailable():
            conn = await asyncpg.connect(self._direct_url, timeout=self.settings.connect_timeout,
                                         command_timeout=self.settings.statement_timeout)
            try:  # a standby refuses LISTEN (read-only): the listener retries, so never leave the connection open
                await conn.add_listener(changes.CHANNEL, lambda _c, _pid, _ch, payload: on_change(payload))
            except BaseException:
                conn.terminate()
                raise
            conn.add_termination_listener(lambda _c: on_lost())
            return Listening(conn)

    async def migrate(self, catalog: Catalog) -> list[str]:
        """Apply pending migrations (see keygate.store.migrations); return the names applied.
        `catalog` spells the collections of stored resource names.

        On a connection of its own without the statement timeout: a migration may rewrite a large
        table, or wait for another process's under the migration lock. On the direct URL: that lock is
        a session's, which a transaction pooler does not keep.
        """
        setting = "KEYGATE_DATABASE_LISTEN_URL" if self.settings.listen_url else _SETTINGS[self.name]
        with _unreachable_is_unavailable():
            with _refusal_names(setting):
                conn = await asyncpg.connect(self._direct_url, timeout=self.settings.connect_timeout)
            try:
                return await migrations.migrate(conn, catalog)
            except asyncpg.exceptions.InsufficientPrivilegeError as exc:
                raise InvalidArgument(setting, f"cannot apply keygate's migrations: {_first_line(exc)} (its role must "
                                               "be allowed to create tables, or an owner run `keygate migrate` first)"
                                      ) from None
            finally:
                await conn.close(timeout=self.settings.connect_timeout)

    def suspect(self) -> None:
        """Something outside the pool (the change listener losing its connection) suggests the database is
        gone: find out with one bounded round trip in the background, which counts like any other use.
        Without it an idle replica would learn of an outage only from the next call that fails."""
        if self._probe is None and (self._verifying is None or self._verifying.done()):
            self._verifying = asyncio.create_task(self._verify(), name="database-verify")

    async def _verify(self) -> None:
        with contextlib.suppress(Unavailable):
            async with self._connection(self.settings.lookup_timeout) as conn:
                await conn.execute(PROBE)

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Close gracefully, but never hang a shutdown on a connection that is not given back."""
        for task in (self._verifying, self._probe):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), timeout)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Reader]:
        async with self._connection(None) as conn:
            yield Reader(conn)

    @asynccontextmanager
    async def lookup(self, budget: float | None = None) -> AsyncIterator[Reader]:
        """A read on the Check path: acquiring and every query together within `budget` seconds
        (default `lookup_timeout`)."""
        async with self._connection(self.settings.lookup_timeout if budget is None else budget) as conn:
            yield Reader(conn)

    @asynccontextmanager
    async def leases(self) -> AsyncIterator[limits.Leases]:
        """The limits engine's lease statements, bounded like a lookup: a refill is on a Check's path."""
        async with self._connection(self.settings.lookup_timeout) as conn:
            yield limits.Leases(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction: everything inside commits together or not at all."""
        async with self._connection(None) as conn:
            transaction = conn.transaction()
            await transaction.start()
            tx = Tx(conn)
            try:
                yield tx
            except BaseException as exc:
                if not isinstance(exc, _ABANDON):  # otherwise the connection is terminated: the server rolls back
                    await transaction.rollback()
                raise
            await transaction.commit()
            for change in tx.changes:
                for callback in self._on_commit:
                    callback(change)

    @asynccontextmanager
    async def _connection(self, budget: float | None) -> AsyncIterator[_Conn]:
        """A pooled connection; at once `Unavailable` while the database is known unreachable, and
        the first failure to reach it makes it known (and starts the probe)."""
        if self._probe is not None:
            raise Unavailable("the database is unreachable; retry shortly")
        try:
            async with self._pooled(budget) as conn:
                yield conn
        except _UNREACHABLE as exc:
            self.errors[_error_kind(exc)] += 1
            if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
                # After a failover every pooled connection may be to the demoted server: replace them all
                # (the URL's target_session_attrs=read-write then finds the new primary).
                await self._pool.expire_connections()
            self._unreachable(exc)
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def _pooled(self, budget: float | None) -> AsyncIterator[_Conn]:
        """A pooled connection, acquired and used within `budget` seconds if given (each statement is
        bounded anyway). One that met a timeout or a lost server is terminated rather than handed back
        for a reset.
        """
        deadline = None if budget is None else asyncio.get_running_loop().time() + budget
        if not self._pool.get_idle_size():
            self.acquire_waits += 1
        try:
            conn = await self._pool.acquire(timeout=self.settings.acquire_timeout if budget is None
                                            else min(self.settings.acquire_timeout, budget))
        except TimeoutError:
            self.acquire_timeouts += 1
            raise
        try:
            async with asyncio.timeout_at(deadline):
                yield conn
        except _ABANDON:
            conn.terminate()
            raise
        finally:
            with contextlib.suppress(*_UNREACHABLE):  # the reset failed: asyncpg has terminated the connection
                await self._pool.release(conn)

    def _unreachable(self, exc: BaseException) -> None:
        """The error's class in the event tells a refusal (a wrong password in the URL) from an outage."""
        if self._probe is None:
            log.warning(f"{self.name}_unreachable", error=type(exc).__name__)
            self._probe = asyncio.create_task(self._probe_until_reachable(), name="database-probe")
            self._tell_reachability()

    async def _probe_until_reachable(self) -> None:
        """One round trip at a time, each within the lookup timeout, until one is answered."""
        while True:
            try:
                async with self._pooled(self.settings.lookup_timeout) as conn:
                    await conn.execute(PROBE)
            except _UNREACHABLE:
                await asyncio.sleep(PROBE_INTERVAL_SECONDS)
                continue
            self._probe = None
            log.info(f"{self.name}_reachable")
            self._tell_reachability()
            return

    def _tell_reachability(self) -> None:
        for callback in self._on_reachability:
            callback(self.reachable)


if TYPE_CHECKING:  # `make lint` (mypy) checks that this store implements every interface it is used through

    def _implements(store: Store, reader: Reader, tx: Tx, listening: Listening, book: limits.Leases) -> None:
        uses: tuple[interface.KeySource, interface.ChangeFeed, interface.AdminStore, interface.UsageStore,
                    interface.LeaseStore, interface.Reads, interface.Writes, interface.Listening,
                    interface.LeaseBook] = (
            store, store, store, store, store, reader, tx, listening, book)
        del uses
