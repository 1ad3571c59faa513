"""bench/placement.py: the servers under test on CPUs of their own, their load on the others."""

from __future__ import annotations

import os

import pytest

from bench import placement


@pytest.mark.parametrize(("cpus", "workers", "servers", "load"), [
    ({0, 1}, 1, {1}, {0}),
    ({0, 1, 2, 3}, 2, {2, 3}, {0, 1}),
    ({4, 5, 6}, 1, {5, 6}, {4}),  # an odd count: the servers get the larger half
])
def test_the_upper_half_serves_and_the_lower_half_loads(monkeypatch: pytest.MonkeyPatch, cpus: set[int],
                                                         workers: int, servers: set[int], load: set[int]) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    assert placement.split(workers) == placement.Placement(frozenset(servers), frozenset(load))


@pytest.mark.parametrize(("cpus", "workers"), [({0}, 1), ({0, 1}, 2), ({0, 1, 2, 3}, 3)])
def test_no_placement_without_a_cpu_for_the_load_and_one_per_worker(monkeypatch: pytest.MonkeyPatch,
                                                                    cpus: set[int], workers: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus)
    assert placement.split(workers) is None


def test_the_block_runs_on_the_load_cpus_and_moves_back() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    chosen = placement.Placement(servers=frozenset({cpu}), load=frozenset({cpu}))
    with placement.placed(chosen) as servers:
        assert servers == {cpu}
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with placement.placed(None) as servers:
        assert servers is None and os.sched_getaffinity(0) == before
