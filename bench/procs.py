"""Run load in several Python processes at once: spawned (never forked: gRPC and asyncpg state do
not survive a fork), started together, stopped whatever happens.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier
from typing import Any

READY_TIMEOUT = 60.0


def fan_out(target: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], timeout: float) -> tuple[list[Any], float]:
    """Call `target(*job, barrier)` in one process per job; return the results and the seconds from the
    common start to the last result.

    Each target sets itself up (connects), then calls `barrier.wait(READY_TIMEOUT)`; the start is
    when every process, and this one, has reached it. A failure in any process is raised here.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs) + 1)
    results = context.Queue()
    processes = [context.Process(target=_child, args=(target, job, barrier, results), daemon=True) for job in jobs]
    try:
        for process in processes:
            process.start()
        barrier.wait(READY_TIMEOUT)
        started = time.perf_counter()
        outcomes = [results.get(timeout=timeout) for _ in processes]
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    errors = [detail for ok, detail in outcomes if not ok]
    if errors:
        raise RuntimeError(f"a load process failed:\n{errors[0]}")
    return [value for _, value in outcomes], elapsed


def _child(target: Callable[..., Any], job: tuple[Any, ...], barrier: Barrier,
           results: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    try:
        results.put((True, target(*job, barrier)))
    except BaseException:
        barrier.abort()  # release the others at once instead of at their timeout
        results.put((False, traceback.format_exc()))
