"""Latency percentiles from a Python grpc.aio client sending Check at a fixed, open-loop rate.

Open loop: calls leave on a schedule (rate x time), whatever the replies do, so a slow server
meets the same offered load as a fast one. Each call's latency runs from the moment the
client issues it to its reply (not from its slot in the schedule: uvloop's timers tick in
milliseconds, which would add up to 1 ms of the client's own making). How late calls leave
against the schedule is reported too: when that lag grows, the client, not the server, is the limit.

A Python client tops out at ~10k calls/s per process and slows well before that, so the rate
is split over processes of at most PER_PROCESS_RATE calls/s each; every process opens several
connections (a private subchannel pool each), so SO_REUSEPORT spreads them over all workers.
Every reply is decoded and must say `allowed`: a fast denial must never pass for a fast answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import grpc
import uvloop

from keygate.v1 import authz_pb2

from . import procs
from .stats import percentile

METHOD = "/keygate.v1.AuthzService/Check"
PER_PROCESS_RATE = 2500.0
CALL_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Latency:
    rate: float  # offered calls/s
    calls: int
    failures: dict[str, int]  # RPC errors (by status) and answers that were not `allowed` (by decision code)
    p50_ms: float
    p99_ms: float
    lag_p99_ms: float  # how late the client issued calls against its schedule: near 0 if it kept up


@dataclass(frozen=True, slots=True)
class _Job:
    target: str
    requests: list[bytes]  # serialized CheckRequests, used in order (cycled only when `cycle`)
    cycle: bool
    rate: float
    warm_up: float
    duration: float
    connections: int


def _processes(rate: float) -> int:
    return max(1, math.ceil(rate / PER_PROCESS_RATE))


def calls_needed(rate: float, warm_up: float, duration: float) -> int:
    """How many distinct requests `measure(distinct=True)` consumes at this rate."""
    processes = _processes(rate)
    return processes * (math.ceil(rate / processes * (warm_up + duration)) + 1)


def measure(target: str, requests: Sequence[authz_pb2.CheckRequest], *, rate: float, duration: float,
            warm_up: float, connections: int, distinct: bool) -> Latency:
    """Offer `rate` calls/s for warm_up + duration seconds; percentiles of the last `duration` seconds.

    distinct=True: every call presents the next request and none is ever repeated (cold keys); there
    must be enough of them. distinct=False: the requests are cycled (one request = one cached key).
    """
    processes = _processes(rate)
    needed = calls_needed(rate, warm_up, duration) // processes
    payloads = [r.SerializeToString() for r in requests]
    if distinct and len(payloads) < needed * processes:
        raise ValueError(f"{len(payloads)} distinct requests cannot feed {needed * processes} calls")
    shares = [payloads[i * needed:(i + 1) * needed] if distinct else payloads for i in range(processes)]
    jobs = [_Job(target, share, not distinct, rate / processes, warm_up, duration,
                 max(1, math.ceil(connections / processes))) for share in shares]

    parts, _ = procs.fan_out(_client, [(job,) for job in jobs], timeout=warm_up + duration + 120)
    latencies = [x for part in parts for x in part[0]]
    lags = [x for part in parts for x in part[1]]
    failures: Counter[str] = Counter()
    for part in parts:
        failures.update(part[2])
    if not latencies:
        raise RuntimeError(f"no call succeeded (failures: {describe(failures)})")
    return Latency(rate, len(latencies), dict(failures), percentile(latencies, 50) * 1000,
                   percentile(latencies, 99) * 1000, percentile(lags, 99) * 1000)


def describe(failures: dict[str, int]) -> str:
    """`3 UNAVAILABLE, 1 denied KEY_NOT_FOUND`: what a failed measurement must say to be worth re-running."""
    return ", ".join(f"{count} {reason}" for reason, count in sorted(failures.items(), key=lambda kv: -kv[1]))


def _client(job: _Job, barrier: Barrier) -> tuple[array, array, Counter[str]]:
    return uvloop.run(_drive(job, barrier))


async def _drive(job: _Job, barrier: Barrier) -> tuple[array, array, Counter[str]]:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one real connection per channel
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(job.connections)]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    stubs = [c.unary_unary(METHOD, response_deserializer=authz_pb2.CheckResponse.FromString) for c in channels]
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, procs.READY_TIMEOUT)  # start together

    latencies, lags = array("d"), array("d")
    failures: Counter[str] = Counter()
    start = 0.0
    total = math.ceil(job.rate * (job.warm_up + job.duration))
    measured_from = math.ceil(job.rate * job.warm_up)

    async def call(i: int) -> None:
        request = job.requests[i % len(job.requests)] if job.cycle else job.requests[i]
        started = time.perf_counter()
        if i >= measured_from:
            lags.append(started - (start + i / job.rate))
        try:
            reply = await stubs[i % len(stubs)](request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            failures[error.code().name] += 1
            return
        elapsed = time.perf_counter() - started
        if not reply.allowed:
            failures["denied " + authz_pb2.DecisionCode.Name(reply.code)] += 1
        elif i >= measured_from:
            latencies.append(elapsed)

    pending: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    issued = 0
    while issued < total:
        due = min(total, math.floor((time.perf_counter() - start) * job.rate) + 1)
        while issued < due:
            task = asyncio.create_task(call(issued))
            pending.add(task)
            task.add_done_callback(pending.discard)
            issued += 1
        await asyncio.sleep(max(0.0, start + issued / job.rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending)
    for channel in channels:
        await channel.close()
    return latencies, lags, failures
