"""A database that answers and refuses keygate: an unknown role or database, a login taken away, a URL or TLS
parameter asyncpg cannot use (the wrong password is the same class of server error, 28P01, as a role it
does not know, 28000; the test server trusts local connections, so it cannot ask for one).

A role that may not create tables (least privilege: an owner ran `keygate migrate`) could not even start:
the migrations' CREATE TABLE IF NOT EXISTS needs the privilege although the table exists.

At start it is a setting to fix: `serve`, `migrate` and `bootstrap` said it with asyncpg's traceback
(InvalidPasswordError, InvalidCatalogNameError) or as "the database is unreachable
(ClientConfigurationError); retry shortly", a start that could never succeed, hiding which file was missing.
While serving (a password rotated under running pods) it is an outage like a stopped server: every call
that needs the database was INTERNAL with a traceback, KeyService stayed SERVING, and the probe died on the
first refusal, so the store never recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest
import structlog.testing

from keygate.domain.errors import Unavailable
from keygate.store.postgres import Store

from ..conftest import Postgres
from .processes import KEYGATE, clean_environment

COMMANDS = (("serve", "--listen", "127.0.0.1:0"), ("migrate",), ("bootstrap",))


def keygate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYGATE, *args], capture_output=True, text=True, env=clean_environment(**env), timeout=60)


def as_role(url: str, role: str) -> str:
    """The test server's URL (postgresql://postgres:@/db?host=...) for another role."""
    assert url.startswith("postgresql://postgres:@/")
    return url.replace("postgres:@", f"{role}:@", 1)


REFUSALS = {
    "an unknown role": (lambda pg: as_role(pg.url(), "nobody"),
                        'the database refused the connection: role "nobody" does not exist'),
    "an unknown database": (lambda pg: pg.url("no_such_database"),
                            'the database refused the connection: database "no_such_database" does not exist'),
    "an sslmode asyncpg does not know": (lambda pg: f"{pg.url()}&sslmode=sometimes",
                                         "cannot be used: `sslmode` parameter must be one of: disable, allow, "
                                         "prefer, require, verify-ca, verify-full"),
    # The secret example's sslmode=verify-full, in an image whose user has no home: one line naming the file.
    "a root certificate that is not there": (lambda pg: f"{pg.url()}&sslmode=verify-full",
                                             'cannot be used: root certificate file "/nonexistent/.postgresql/'
                                             'root.crt" does not exist or cannot be accessed'),
    # An unencoded / ends the authority early: asyncpg's parser then quotes the password as the port.
    "a password with an unencoded slash": (lambda pg: "postgresql://keygate:s3c/r3t@127.0.0.1:5432/keygate",
                                           "cannot be parsed: is each port a number, and is every /, :, @, ? or # "
                                           "in the password percent-encoded?"),
}


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize(("url", "says"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_a_refusal_at_start_is_one_line_naming_the_setting(postgres: Postgres, command: tuple[str, ...],
                                                          url, says: str) -> None:
    done = keygate(*command, DATABASE_URL=url(postgres), HOME="/nonexistent")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"keygate: DATABASE_URL (--database-url): {says}\n")
    assert "r3t" not in done.stderr


def test_a_refusal_of_the_listen_url_names_that_setting(postgres: Postgres, database_url: str) -> None:
    """Migrations run on KEYGATE_DATABASE_LISTEN_URL when it is set: the line must not blame DATABASE_URL."""
    done = keygate("migrate", DATABASE_URL=database_url, KEYGATE_DATABASE_LISTEN_URL=as_role(database_url, "nobody"))
    assert (done.returncode, done.stderr) == (1, "keygate: KEYGATE_DATABASE_LISTEN_URL (--database-listen-url): the "
                                                 'database refused the connection: role "nobody" does not exist\n')


async def count(store: Store) -> int:
    async with store.read() as reader:
        return await reader.count_digests()


async def test_a_refusal_while_serving_is_an_outage_that_ends(database_url: str) -> None:
    """A role whose login is taken away under a running store: Unavailable (never asyncpg's error), the store
    known unreachable (its warning naming the refusal, which a down server would not), and reachable again by
    itself once the login is back."""
    admin = await asyncpg.connect(database_url)
    role = f"refused_{abs(hash(database_url)) % 10**8}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    await admin.execute(f'GRANT SELECT ON key_secrets TO "{role}"')
    store = await Store.connect(as_role(database_url, role), min_size=0, max_size=1)
    try:
        assert await count(store) == 0
        await admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await store.close()  # a fresh pool: its first use connects, and is refused
        store = await Store.connect(as_role(database_url, role), min_size=0, max_size=1)
        with structlog.testing.capture_logs() as logged, \
                pytest.raises(Unavailable, match="InvalidAuthorizationSpecificationError"):
            await count(store)
        assert {"event": "database_unreachable", "error": "InvalidAuthorizationSpecificationError",
                "log_level": "warning"} in logged
        assert not store.reachable
        await asyncio.sleep(1)  # probes refused meanwhile: each is retried, none ends the probe
        assert not store.reachable
        await admin.execute(f'ALTER ROLE "{role}" LOGIN')
        async with asyncio.timeout(5):
            while not store.reachable:
                await asyncio.sleep(0.05)
        assert await count(store) == 0
    finally:
        await store.close()
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


@contextlib.asynccontextmanager
async def least_privileged(database_url: str) -> AsyncIterator[str]:
    """The URL of a new role that may read and write keygate's tables in this database, and create none."""
    admin = await asyncpg.connect(database_url)
    role = f"serving_{abs(hash(database_url)) % 10**8}"
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    await admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        yield as_role(database_url, role)
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_a_role_that_only_serves_starts_once_an_owner_has_migrated(database_url: str) -> None:
    async with least_privileged(database_url) as url:
        done = await asyncio.to_thread(keygate, "migrate", DATABASE_URL=url)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (0, "applied 0 migration(s): none pending")


async def test_a_role_that_cannot_create_keygates_tables_is_one_line(postgres: Postgres) -> None:
    async with least_privileged(await postgres.fresh_database("template0")) as url:
        done = await asyncio.to_thread(keygate, "migrate", DATABASE_URL=url)
    assert (done.returncode, done.stderr) == (1, "keygate: DATABASE_URL (--database-url): cannot apply keygate's "
                                                 "migrations: permission denied for schema public (its role must be "
                                                 "allowed to create tables, or an owner run `keygate migrate` first)\n")
