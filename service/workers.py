"""`serve --workers N`: N processes on one port (SO_REUSEPORT), each with its own cache and listener.

One Python process is bound by the GIL; the kernel spreads connections (not calls) over
the workers. The supervisor starts them, announces the port once all are serving,
restarts a worker that dies, and stops them all on SIGINT or SIGTERM (each drains, as `serve` does).

Workers end with their supervisor even when it is SIGKILLed (nothing else would stop them, and they
would keep the port): on Linux the kernel sends them SIGTERM when it dies (PR_SET_PDEATHSIG), and
everywhere each worker watches the pipe multiprocessing keeps from its supervisor, whose end of file
means the supervisor is gone.

This module does not import `server`: the supervisor is handed the function each worker serves with
(`server.serve_until_signalled`, picklable by name for the spawned workers) and the announcement to make
once all workers are ready.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import uvloop

from . import logs
from .metrics import Exporter, Fleet, Metrics, answer_scrapes

if TYPE_CHECKING:
    from .config import Settings

log = structlog.get_logger(__name__)

READY_TIMEOUT = 60.0
STOP_MARGIN = 15.0  # seconds a worker may take beyond the grace: flush usage, close the pool (each bounded)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_mp = multiprocessing.get_context("spawn")  # no forked grpc or asyncio state in the children


class Serve(Protocol):
    """Serve on `settings.listen` until signalled or until `supervisor_gone` turns readable, calling
    `on_ready` with the port once serving and `on_metrics` with the metrics when they are on."""

    def __call__(self, settings: Settings, url: str, *, on_ready: Callable[[int], None],
                 on_metrics: Callable[[Metrics], None] | None = None, reuse_port: bool = False,
                 supervisor_gone: int | None = None) -> Coroutine[Any, Any, None]: ...


def _worker(serve: Serve, settings: Settings, url: str, ready: multiprocessing.Queue[int],
            metrics_pipe: Connection | None) -> None:
    """A worker process's main: serve on the shared port until signalled; answer the supervisor's
    requests for metrics on `metrics_pipe`."""

    def export(metrics: Metrics) -> None:
        if metrics_pipe is not None:
            answer_scrapes(asyncio.get_running_loop(), metrics_pipe, metrics)

    supervisor = _end_with_supervisor()
    logs.configure(settings.log_level, access=settings.access_log)
    uvloop.run(serve(settings, url, on_ready=ready.put, on_metrics=export, reuse_port=True,
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
    """`serve` runs in each worker (a module-level function: it is pickled by name); `on_ready` is called
    here with the port once every worker serves; `exporter`, when given, scrapes all workers at once."""

    def __init__(self, settings: Settings, url: str, serve: Serve, *, on_ready: Callable[[int], None],
                 exporter: Exporter | None = None) -> None:
        self._settings = replace(settings, listen=_fixed_port(settings.listen))
        self._url = url
        self._serve = serve
        self._on_ready = on_ready
        self._ready: multiprocessing.Queue[int] = _mp.Queue()
        self._workers: list[BaseProcess] = []
        self._stopping = False
        self._exporter = exporter
        self._fleet = Fleet(settings.workers) if exporter is not None else None

    def _spawn(self, index: int) -> BaseProcess:
        ours, theirs = _mp.Pipe() if self._fleet is not None else (None, None)
        process = _mp.Process(target=_worker, args=(self._serve, self._settings, self._url, self._ready, theirs),
                              name=f"keygate-worker-{index}", daemon=True)
        process.start()
        if self._fleet is not None and ours is not None and theirs is not None:
            theirs.close()  # the worker's end lives in the worker: its death is then an EOF here
            self._fleet.attach(index, ours)
        return process

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        if self._exporter is not None and self._fleet is not None:
            self._exporter.show(self._fleet.collect)
        self._workers = [self._spawn(i) for i in range(self._settings.workers)]
        try:
            ports = {self._ready.get(timeout=READY_TIMEOUT) for _ in self._workers}
            self._on_ready(ports.pop())
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
