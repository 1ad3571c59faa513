"""`serve --workers N`: N processes on one port (SO_REUSEPORT), each with its own cache and listener.

One Python process is bound by the GIL; the kernel spreads connections (not calls) over
the workers. The supervisor starts them, announces the port once all are serving,
restarts a worker that dies, and stops them all on SIGINT or SIGTERM (each drains, as `serve` does).

Workers end with their supervisor even when it is SIGKILLed (nothing else would stop them, and they
would keep the port): on Linux the kernel sends them SIGTERM when it dies (PR_SET_PDEATHSIG), and
everywhere each worker watches the pipe multiprocessing keeps from its supervisor, whose end of file
means the supervisor is gone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import structlog
import uvloop

from . import logs

if TYPE_CHECKING:
    from .config import Settings

log = structlog.get_logger(__name__)

READY_TIMEOUT = 60.0
STOP_MARGIN = 15.0  # seconds a worker may take beyond the grace: flush usage, close the pool (each bounded)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_mp = multiprocessing.get_context("spawn")  # no forked grpc or asyncio state in the children


def _worker(settings: Settings, url: str, ready: multiprocessing.Queue[int]) -> None:
    """A worker process's main: serve on the shared port until signalled."""
    from .server import serve_until_signalled

    supervisor = _end_with_supervisor()
    logs.configure(settings.log_level, access=settings.access_log)
    uvloop.run(serve_until_signalled(settings, url, on_ready=ready.put, reuse_port=True,
                                     supervisor_gone=supervisor.sentinel))


def _end_with_supervisor() -> BaseProcess:
    """Ask for SIGTERM when the supervisor dies (Linux), and leave at once if it died before we asked.
    Returns the supervisor, whose `sentinel` turns readable when it is gone (on every platform)."""
    supervisor = multiprocessing.parent_process()
    assert supervisor is not None, "a worker is started by the supervisor"
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor.pid:  # re-parented already: the signal asked for above will never come
        raise SystemExit(0)
    return supervisor


def _fixed_port(listen: str) -> str:
    """Workers must agree on one port: resolve a requested port 0 to a free one first."""
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    with socket.socket() as probe:
        probe.bind((host.strip("[]") or "127.0.0.1", 0))
        return f"{host}:{probe.getsockname()[1]}"


class Supervisor:
    def __init__(self, settings: Settings, url: str) -> None:
        self._settings = replace(settings, listen=_fixed_port(settings.listen))
        self._url = url
        self._ready: multiprocessing.Queue[int] = _mp.Queue()
        self._workers: list[BaseProcess] = []
        self._stopping = False

    def _spawn(self, index: int) -> BaseProcess:
        process = _mp.Process(target=_worker, args=(self._settings, self._url, self._ready),
                              name=f"keygate-worker-{index}", daemon=True)
        process.start()
        return process

    def run(self) -> None:
        from .server import announce

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        self._workers = [self._spawn(i) for i in range(self._settings.workers)]
        try:
            ports = {self._ready.get(timeout=READY_TIMEOUT) for _ in self._workers}
            announce(self._settings, ports.pop())
            while not self._stopping:
                time.sleep(0.2)
                self._restart_dead()
        finally:
            self._stop_all()

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _restart_dead(self) -> None:
        for i, process in enumerate(self._workers):
            if not process.is_alive() and not self._stopping:
                log.error("worker_died", worker=process.name, exitcode=process.exitcode)
                self._workers[i] = self._spawn(i)

    def _stop_all(self) -> None:
        for process in self._workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + self._settings.shutdown_grace + STOP_MARGIN
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
