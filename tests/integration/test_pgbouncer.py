"""keygate behind a real PgBouncer (Debian's package, 1.18: no prepared statements) in transaction pooling
mode: KEYGATE_DATABASE_POOLER=pgbouncer turns the statement cache off, and the change listener and the
migrations use KEYGATE_DATABASE_LISTEN_URL, a direct connection (README "Database topology").

`make test` installs PgBouncer when it is missing and runs as root (CI); a developer without it gets a
skip that says how to install it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import psutil
import pytest
from google.protobuf import field_mask_pb2

from keygate.config import Settings
from keygate.domain.errors import InvalidArgument
from keygate.server import App
from keygate.store.postgres import DatabaseSettings
from keygate.v1 import authz_pb2, keys_pb2
from tests.pgcluster import SYSTEM_USER, Cluster

from .support import Client, auth, connect

INSTALL = "apt-get update && apt-get install -y pgbouncer"
POOL_SIZE = 2  # server connections per database: far fewer than keygate's pool, so they are shared


def pgbouncer_binary() -> str:
    """The installed PgBouncer; a skip (non-root, with the install command) or a failure (root: CI, where
    `make test` installs it) if there is none."""
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.path.exists(p)), None)
    if found:
        return found
    if os.geteuid() == 0:
        pytest.fail(f"PgBouncer is not installed; `make test` installs it as root ({INSTALL})")
    pytest.skip(f"PgBouncer is not installed: {INSTALL} (as root; `make test` does it when run as root)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgBouncer:
    """A PgBouncer in transaction pooling mode in front of `server_port`, until `stop`."""

    def __init__(self, root: Path, server_port: int) -> None:
        self.port = _free_port()
        (root / "users.txt").write_text('"postgres" ""\n')
        (root / "pgbouncer.ini").write_text(f"""[databases]
* = host=127.0.0.1 port={server_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {root / "users.txt"}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 500
logfile = {root / "pgbouncer.log"}
""")
        if SYSTEM_USER:  # PgBouncer refuses to run as root
            shutil.chown(root, SYSTEM_USER)
            for child in root.iterdir():
                shutil.chown(child, SYSTEM_USER)
        command = [pgbouncer_binary(), str(root / "pgbouncer.ini")]
        if SYSTEM_USER:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        self.log = root / "pgbouncer.log"
        with (root / "pgbouncer.out").open("wb") as out:  # what it says before its log file is open
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._out = root / "pgbouncer.out"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def ready(self, database: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = await asyncpg.connect(self.url(database), statement_cache_size=0, timeout=5)
                await conn.close()
                return
            assert self._process.poll() is None, f"pgbouncer exited: {self._out.read_text()}"
            assert time.monotonic() < deadline, f"pgbouncer did not start: {self._out.read_text()}"
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM PgBouncer (runuser's child) and runuser, by their ids."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [*psutil.Process(self._process.pid).children(recursive=True)]:
                process.terminate()
        self._process.terminate()
        self._process.wait(10)


@pytest.fixture(scope="module")
def cluster(pg_dirs: Callable[[str], Path]) -> Iterator[Cluster]:
    cluster = asyncio.run(Cluster.create(pg_dirs("pgbouncer-pg"), replicas=0))
    yield cluster
    asyncio.run(cluster.remove())


@pytest.fixture(scope="module")
def bouncer(cluster: Cluster, pg_dirs: Callable[[str], Path]) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_dirs("pgbouncer"), cluster.primary.port)
    yield bouncer
    bouncer.stop()


@pytest.fixture
async def database(cluster: Cluster, bouncer: PgBouncer) -> str:
    name = f"kg_{os.urandom(6).hex()}"
    await cluster.create_database(name, migrate=False)  # keygate migrates it: on the direct URL
    await bouncer.ready(name)
    return name


def pooled_settings(cluster: Cluster, database: str) -> Settings:
    return Settings(listen="127.0.0.1:0", metrics=None, database=DatabaseSettings(
        listen_url=cluster.primary.url(database), pooler="pgbouncer"))


@asynccontextmanager
async def serving(settings: Settings, url: str) -> AsyncIterator[Client]:
    app = await App.start(settings, url)
    try:
        await asyncio.wait_for(app.listener.connected.wait(), 10)
        async with connect(app) as client:
            yield client
    finally:
        await app.stop(grace=0)


async def test_keygate_serves_through_pgbouncer_and_changes_propagate_over_the_direct_listener(
        cluster: Cluster, bouncer: PgBouncer, database: str) -> None:
    settings = pooled_settings(cluster, database)
    async with serving(settings, bouncer.url(database)) as a, serving(settings, bouncer.url(database)) as b:
        keys = [await a.create() for _ in range(20)]
        answers = await asyncio.gather(*(b.check(key.api_key) for key in keys))  # concurrent cold lookups
        assert all(answer.allowed for answer in answers)

        disable = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=keys[0].key.id, disabled=True),
                                            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]))
        await a.keys.UpdateKey(disable, metadata=auth(a.root))
        deadline = time.monotonic() + 1.5  # B's cache hears it over its LISTEN, within the bound (1 s)
        while (await b.check(keys[0].api_key)).code != authz_pb2.KEY_DISABLED:
            assert time.monotonic() < deadline, "the change never reached the other keygate"
            await asyncio.sleep(0.01)
        await a.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=keys[1].key.id), metadata=auth(a.root))
        deadline = time.monotonic() + 1.5
        while (await b.check(keys[1].api_key)).code != authz_pb2.KEY_NOT_FOUND:
            assert time.monotonic() < deadline, "the deletion never reached the other keygate"
            await asyncio.sleep(0.01)

        listing = await b.keys.ListKeys(keys_pb2.ListKeysRequest(workspace_id="ws1"), metadata=auth(b.root))
        assert len(listing.keys) == 19


async def test_with_the_statement_cache_on_pgbouncer_breaks_lookups(
        cluster: Cluster, bouncer: PgBouncer, database: str) -> None:
    """Why the setting exists: asyncpg's named prepared statements land on another server connection."""
    async with serving(pooled_settings(cluster, database), bouncer.url(database)) as a:
        keys = [await a.create() for _ in range(10)]
    conn_a = await asyncpg.connect(bouncer.url(database))  # statement cache on, as without the setting
    conn_b = await asyncpg.connect(bouncer.url(database))
    try:
        failed = 0
        for _ in range(20):
            results = await asyncio.gather(  # each connection prepares its own statements, named alike
                conn_a.fetchval("SELECT count(*) FROM api_keys WHERE name <> $1", "a"),
                conn_b.fetchval("SELECT count(*) FROM api_keys WHERE display <> $1::text", "b"),
                return_exceptions=True)
            failed += sum(isinstance(r, asyncpg.PostgresError | asyncpg.InterfaceError) for r in results)
        assert failed > 0 and len(keys) == 10
    finally:
        await conn_a.close()
        await conn_b.close()


def test_a_pooler_without_a_direct_url_fails_at_start_naming_the_setting() -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings.from_env({"DATABASE_URL": "postgresql://u@bouncer/db", "KEYGATE_DATABASE_POOLER": "pgbouncer"})
    assert "KEYGATE_DATABASE_LISTEN_URL" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        Settings.from_env({"KEYGATE_DATABASE_POOLER": "odyssey"})
    assert "KEYGATE_DATABASE_POOLER" in str(info.value)
