"""A real PostgreSQL streaming-replication cluster for tests: a primary and its standbys.

Made from the pgserver wheel's own binaries (initdb, pg_ctl, pg_basebackup), as an operator would make
one: the standbys are `pg_basebackup -R` copies that stream the primary's WAL and replay it. Every node
listens on 127.0.0.1 (a multi-host URL names them by port) with trust authentication, replication
included, and keeps its socket in its own directory.

Under root, PostgreSQL runs as pgserver's system user (it refuses to run as root), through `runuser`
rather than subprocess's `user=`: that takes a plain fork(), which crashes the child while gRPC threads
are busy in the test's process (see private_postgres.py).

fsync is off: the faults injected here kill processes, never the machine, so what a killed server had
written is still in the page cache for the next start; it keeps the tests fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import psutil

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # pgserver warns on import without it

from pgserver import _commands, utils  # after the runtime directory is settled

BIN = _commands.POSTGRES_BIN_PATH
SUPERUSER = "postgres"
SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None
COMMAND_TIMEOUT = 120.0  # seconds: pg_basebackup of a fresh cluster, or a start, on a loaded machine
POLL = 0.05


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _run(*command: str) -> None:
    """Run a PostgreSQL binary as the system user; AssertionError with its output if it fails."""
    argv = [str(BIN / command[0]), *command[1:]]
    if SYSTEM_USER:
        argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        raise
    assert process.returncode == 0, f"{command[0]} {command[-1]} failed: {output.decode(errors='replace')}"


class Node:
    """One PostgreSQL server of the cluster: the primary or a standby."""

    def __init__(self, name: str, pgdata: Path, port: int) -> None:
        self.name = name
        self.pgdata = pgdata
        self.port = port

    def __repr__(self) -> str:
        return f"Node({self.name}, port={self.port})"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.pgdata.parent / f"{self.name}.log"

    def _configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf: a later line wins over an earlier one."""
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(lines)

    async def start(self) -> None:
        await _run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(int(COMMAND_TIMEOUT)), "-l", str(self.log),
                   "start")

    async def stop(self, mode: str = "fast") -> None:
        await _run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def running(self) -> bool:
        return self._postmaster() is not None

    def _postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            process = psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return None
        return process if process.is_running() and process.status() != psutil.STATUS_ZOMBIE else None

    def pids(self) -> list[int]:
        """The postmaster and every process it started (for SIGSTOP: a hung server)."""
        postmaster = self._postmaster()
        if postmaster is None:
            return []
        return [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once, as a machine that dies takes them: no
        backend lives on to answer a connection it already had."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    async def execute(self, sql: str, *args: object, database: str = "postgres") -> object:
        """One statement on a direct connection; its first value (or None)."""
        conn = await asyncpg.connect(self.url(database), timeout=10)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def in_recovery(self) -> bool:
        return bool(await self.execute("SELECT pg_is_in_recovery()"))

    async def promote(self) -> None:
        """Make this standby a primary, and wait until it accepts writes."""
        await _run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(int(COMMAND_TIMEOUT)), "promote")
        await _until(self._accepts_writes, "promotion")

    async def _accepts_writes(self) -> bool:
        return not await self.in_recovery()

    async def pause_replay(self) -> None:
        """Stop applying the WAL it receives: reads see the past from now on (injected replication lag)."""
        await self.execute("SELECT pg_wal_replay_pause()")
        await _until(self._replay_paused, "replay pause")

    async def _replay_paused(self) -> bool:
        return await self.execute("SELECT pg_get_wal_replay_pause_state()") == "paused"

    async def resume_replay(self) -> None:
        await self.execute("SELECT pg_wal_replay_resume()")

    async def replayed(self, lsn: int) -> bool:
        """Whether this standby has replayed the WAL up to `lsn` (asyncpg reads a pg_lsn as an int)."""
        replayed = await self.execute("SELECT pg_last_wal_replay_lsn()")
        return isinstance(replayed, int) and replayed >= lsn


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """Poll an async predicate until it holds; TimeoutError naming `what` if it does not in time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if await condition():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(POLL)


class Cluster:
    """A primary and its streaming standbys in `root` (a directory of the test's own, outside pytest's
    0700 temp tree: the system user must reach it)."""

    def __init__(self, root: Path, primary: Node) -> None:
        self.root = root
        self.primary = primary
        self.replicas: list[Node] = []
        self.retired: list[Node] = []  # former primaries, dead after a failover
        self._numbers = 0

    @classmethod
    async def create(cls, root: Path, replicas: int = 1, *, synchronous: bool = False) -> Cluster:
        """A started primary with `replicas` started, streaming standbys. `synchronous`: a commit waits
        until a standby has flushed it (synchronous_standby_names='*'), so a failover loses no
        acknowledged commit."""
        _open_for_system_user(root)
        primary = Node("primary", root / "primary", _free_port())
        await _run("initdb", "--auth=trust", "--encoding=utf8", "-U", SUPERUSER, "-D", str(primary.pgdata))
        primary._configure({
            "listen_addresses": "127.0.0.1", "port": str(primary.port), "unix_socket_directories": str(root),
            "wal_level": "replica", "max_wal_senders": "10", "hot_standby": "on", "fsync": "off",
            "wal_keep_size": "256MB", "max_connections": "200",
        })
        if synchronous:
            primary._configure({"synchronous_standby_names": "*", "synchronous_commit": "on"})
        cluster = cls(root, primary)
        try:
            await primary.start()
            for _ in range(replicas):
                await cluster.add_replica()
        except BaseException:
            await cluster.remove()
            raise
        return cluster

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, root: Path, replicas: int = 1, *, synchronous: bool = False) -> AsyncIterator[Cluster]:
        cluster = await cls.create(root, replicas, synchronous=synchronous)
        try:
            yield cluster
        finally:
            await cluster.remove()

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas]

    async def add_replica(self) -> Node:
        """A new standby copied from the primary with pg_basebackup -R, started and streaming."""
        self._numbers += 1
        replica = Node(f"replica{self._numbers}", self.root / f"replica{self._numbers}", _free_port())
        await _run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", SUPERUSER,
                   "-D", str(replica.pgdata), "-R", "-X", "stream", "-c", "fast")
        replica._configure({"port": str(replica.port)})
        await replica.start()
        self.replicas.append(replica)
        await self.wait_replayed()
        return replica

    def url(self, database: str = "postgres", *, nodes: Sequence[Node] | None = None,
            read_write: bool = True) -> str:
        """A multi-host URL of `nodes` (default: all, primary first). `read_write`: the client keeps trying
        hosts until one accepts writes (target_session_attrs=read-write), as a failover needs."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in (nodes or self.nodes))
        query = "?target_session_attrs=read-write" if read_write else ""
        return f"postgresql://{SUPERUSER}@{hosts}/{database}{query}"

    async def create_database(self, name: str, *, migrate: bool = True) -> str:
        """A database on the primary (keygate's migrations applied unless told otherwise), replayed on
        every running standby; returns its primary-only URL."""
        await self.primary.execute(f'CREATE DATABASE "{name}"')
        if migrate:
            from keygate.domain.permissions import Catalog
            from keygate.store.postgres import Store

            store = await Store.connect(self.primary.url(name))
            try:
                await store.migrate(Catalog.build())
            finally:
                await store.close()
        await self.wait_replayed()
        return self.primary.url(name)

    async def wait_replayed(self, timeout: float = 30.0) -> None:
        """Wait until every running standby has replayed everything the primary has written so far."""
        lsn = await self.primary.execute("SELECT pg_current_wal_lsn()")
        assert isinstance(lsn, int)
        for replica in self.replicas:
            if replica.running():
                await _until(lambda replica=replica: replica.replayed(lsn), f"{replica.name} replay", timeout)

    async def failover(self, replica: Node | None = None) -> Node:
        """The primary dies (SIGKILL, all its processes) and `replica` (default: the first) is promoted;
        returns the new primary, once it accepts writes. The old primary stays down: it is no longer part
        of the cluster (restarting it would make a second primary)."""
        new = replica or self.replicas[0]
        self.primary.kill()
        await new.promote()
        self.replicas.remove(new)
        if not self.replicas:
            # The standby took the primary's postgresql.conf, synchronous_standby_names included: with no
            # standby left, every commit would wait forever. A failover manager in non-strict synchronous
            # mode (Patroni's default) does the same: it drops the requirement until a standby is back.
            await new.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
            await new.execute("SELECT pg_reload_conf()")
        self.retired.append(self.primary)
        self.primary = new
        return new

    async def remove(self) -> None:
        """Stop every node, whatever state it is in; the caller deletes `root`."""
        for node in [*self.nodes, *self.retired]:
            if node.running():
                try:
                    await node.stop("immediate")
                except (AssertionError, TimeoutError):
                    node.kill()


def _open_for_system_user(root: Path) -> None:
    """Under root: let the system user reach `root` and the binaries, and own `root`."""
    if SYSTEM_USER is None:
        return
    import pwd

    utils.ensure_user_exists(SYSTEM_USER)
    utils.ensure_prefix_permissions(root)
    utils.ensure_prefix_permissions(BIN)
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(root, entry.pw_uid, entry.pw_gid)
