"""Where the throughput sections' processes run: each server under test on CPUs of its own, its load on the others.

On two CPUs, three busy processes (h2load, Envoy, the authz server) left to the scheduler made a round's
throughput depend on where it put them: one run's paired Envoy rounds read 0.75 to 1.04 and fell in
two groups, about 0.8 and about 0.97. With the servers under test on the upper half of the CPUs and
h2load, Envoy and the latency client on the lower (as in production, where neither the proxy nor the
callers share keygate's CPUs) one 5-round run of the same section read 0.88-0.94, each server's throughput
following its own CPU per request; the first full run placed still read 0.64-0.96 (the hypervisor slows one
core at a time too), so placing narrows the swing from sharing cores, not the machine's own. Sections 1
and 4 are placed; the others (cold keys, where PostgreSQL works too; the Flowise baseline, which uses
every CPU; the client's cache) are not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    servers: frozenset[int]  # the server under test: keygate or the constant server, never both at once under load
    load: frozenset[int]  # h2load, Envoy, the latency client's processes, and this process while placed

    def describe(self) -> str:
        return (f"servers under test on CPU {_cpus(self.servers)}; h2load, Envoy and the latency client on "
                f"CPU {_cpus(self.load)}")


def split(workers: int) -> Placement | None:
    """The upper half of this process's CPUs for the servers, the lower half for their load; None (the
    scheduler decides) with fewer than two CPUs, or fewer server CPUs than worker processes."""
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2
    if half < 1 or len(cpus) - half < workers:
        return None
    return Placement(frozenset(cpus[half:]), frozenset(cpus[:half]))


@contextmanager
def placed(placement: Placement | None) -> Iterator[frozenset[int] | None]:
    """Within the block, this process and whatever it starts run on the load CPUs; yields the servers'
    CPUs, for `on`. Without a placement nothing moves and it yields None."""
    if placement is None:
        yield None
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, placement.load)
    try:
        yield placement.servers
    finally:
        os.sched_setaffinity(0, before)


def on(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A child's `preexec_fn` that puts it on `cpus` before it runs (and so every thread it starts)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))
