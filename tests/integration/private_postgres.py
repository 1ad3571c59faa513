"""A PostgreSQL of a test's own, to stop, restart or hang without stalling every other test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pgserver
import psutil
from pgserver import _commands

T = TypeVar("T")


class PrivatePostgres:
    """A PostgreSQL of this test's own (pgserver), stopped and started with pg_ctl as pgserver does it:
    as pgserver's system user, on the same socket directory, so its URL stays the same.

    pg_ctl runs through `runuser` rather than subprocess's `user=`: that takes a plain fork(), which
    crashes the child (SIGSEGV) while gRPC threads are busy in this process.
    """

    def __init__(self, pgdata: Path) -> None:
        self.server = pgserver.get_server(pgdata, cleanup_mode="delete")
        self.url = self.server.get_uri()
        self._socket_dir = self.server.get_postmaster_info().socket_dir

    async def _pg_ctl(self, *args: str) -> None:
        command = [str(_commands.POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.server.pgdata), "-w", *args]
        if self.server.system_user:
            command = ["runuser", "-u", self.server.system_user, "--", *command]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(process.wait(), 60) == 0, f"{args[-1]} failed: {self.server.log.read_text()}"

    async def stop(self) -> None:
        await self._pg_ctl("-m", "fast", "stop")

    async def start(self) -> None:
        await self._pg_ctl("-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self.server.log), "start")

    async def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            await self.stop()
        self.server.cleanup()


def on_private_postgres(pg_dirs: Callable[[str], Path], name: str,
                        scenario: Callable[[PrivatePostgres], Awaitable[T]]) -> T:
    """Run `scenario` on a PostgreSQL of its own, removed afterwards."""
    pg = PrivatePostgres(pg_dirs(name) / "data")
    try:
        return asyncio.run(scenario(pg))
    finally:
        asyncio.run(pg.remove())


def postgres_processes(pg: PrivatePostgres) -> list[int]:
    """The postmaster (as its pid file names it now: a restart starts another) and every process it started."""
    postmaster = psutil.Process(int((pg.server.pgdata / "postmaster.pid").read_text().split()[0]))
    return [postmaster.pid, *(child.pid for child in postmaster.children(recursive=True))]


@contextlib.contextmanager
def stopped(pids: Iterable[int]) -> Iterator[None]:
    """SIGSTOP these processes, SIGCONT them on the way out: from outside, a stuck disk or a network
    partition looks like this (connections stay open, nothing answers)."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
