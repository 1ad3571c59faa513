"""Single-flight: one read per slot however many callers, and a read that overlaps an invalidation is
not kept."""

from __future__ import annotations

import asyncio

import pytest

from keygate.cache.flight import Flight
from keygate.cache.freshness import Freshness

from .conftest import Clock


class Reads:
    """A fetch that waits for `release` and counts its calls; kept values land in `kept`."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.kept: list[tuple[str, float]] = []
        self.fail = False

    async def fetch(self) -> str:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("read failed")
        return f"value-{self.calls}"

    def keep(self, value: str, at: float) -> None:
        self.kept.append((value, at))


@pytest.fixture
def freshness(clock: Clock) -> Freshness:
    return Freshness(10.0, 0.8, 60.0, lambda: True, clock)


async def test_concurrent_callers_share_one_read(freshness: Freshness) -> None:
    flight, reads = Flight(freshness), Reads()
    waiting = [asyncio.ensure_future(flight.load("slot", reads.fetch, reads.keep)) for _ in range(10)]
    await asyncio.sleep(0)
    assert len(flight) == 1
    reads.release.set()
    assert await asyncio.gather(*waiting) == ["value-1"] * 10
    assert reads.calls == 1 and len(reads.kept) == 1 and len(flight) == 0


async def test_a_caller_giving_up_does_not_cancel_the_read_for_the_others(freshness: Freshness) -> None:
    flight, reads = Flight(freshness), Reads()
    impatient = asyncio.ensure_future(flight.load("slot", reads.fetch, reads.keep))
    patient = asyncio.ensure_future(flight.load("slot", reads.fetch, reads.keep))
    await asyncio.sleep(0)
    impatient.cancel()
    await asyncio.sleep(0)
    reads.release.set()
    assert await patient == "value-1"
    assert impatient.cancelled() and reads.kept == [("value-1", freshness.clock())]


async def test_a_read_overlapping_an_invalidation_answers_but_is_not_kept(freshness: Freshness) -> None:
    flight, reads = Flight(freshness), Reads()
    waiting = asyncio.ensure_future(flight.load("slot", reads.fetch, reads.keep))
    await asyncio.sleep(0)
    freshness.invalidate()  # the change arrives while the read is in flight
    reads.release.set()
    assert await waiting == "value-1"
    assert reads.kept == []


async def test_a_failed_read_fails_every_caller_and_frees_the_slot(freshness: Freshness) -> None:
    flight, reads = Flight(freshness), Reads()
    reads.fail = True
    reads.release.set()
    results = await asyncio.gather(*(flight.load("slot", reads.fetch, reads.keep) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and reads.calls == 1
    reads.fail = False
    assert await flight.load("slot", reads.fetch, reads.keep) == "value-2"


async def test_different_slots_read_independently(freshness: Freshness) -> None:
    flight, reads = Flight(freshness), Reads()
    reads.release.set()
    found = await asyncio.gather(flight.load("a", reads.fetch, reads.keep), flight.load("b", reads.fetch, reads.keep))
    assert list(found) == ["value-1", "value-2"]
