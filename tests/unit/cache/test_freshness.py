"""Freshness: ttl, refresh-ahead, the listener's trust deadline, and the outage grace."""

from __future__ import annotations

import math

import pytest

from keygate.cache.entries import Entry
from keygate.cache.freshness import AGING, FRESH, GRACED, STALE, Freshness
from keygate.domain.errors import Unavailable

from .conftest import Clock


def freshness(clock: Clock, reachable: list[bool] | None = None) -> Freshness:
    up = reachable if reachable is not None else [True]
    return Freshness(ttl=10.0, refresh_ahead=0.8, outage_grace=60.0, reachable=lambda: up[0], clock=clock)


def test_an_entry_is_fresh_for_its_ttl_and_aging_past_refresh_ahead(clock: Clock) -> None:
    f = freshness(clock)
    read = clock.now
    assert f.state(read, read + 7.9) == FRESH
    assert f.state(read, read + 8.1) == AGING
    assert f.state(read, read + 10.0) == STALE
    assert f.fresh(read, read + 9.9) and not f.fresh(read, read + 10.0)


def test_a_stale_entry_answers_within_the_grace_only_while_the_database_is_unreachable(clock: Clock) -> None:
    reachable = [True]
    f = freshness(clock, reachable)
    read = clock.now
    assert f.state(read, read + 30) == STALE
    reachable[0] = False
    assert f.state(read, read + 30) == GRACED
    assert f.state(read, read + 70) == STALE  # ttl + grace passed


def test_a_restart_stales_what_was_read_before_it(clock: Clock) -> None:
    f = freshness(clock)
    before = clock.now
    clock.now += 1
    generation = f.generation
    f.restart(math.inf)
    assert f.generation > generation
    assert f.state(before, clock.now) == STALE
    assert f.state(clock.now, clock.now + 1) == FRESH
    assert f.fresh_until(before) == -math.inf and f.fresh_until(clock.now) == clock.now + 10


def test_nothing_is_fresh_past_the_listeners_trust_deadline(clock: Clock) -> None:
    f = freshness(clock)
    f.restart(clock.now + 1)
    read = clock.now
    assert f.state(read, read + 0.5) == FRESH
    assert f.state(read, read + 1.0) == STALE
    f.trust(read + 2)
    assert f.state(read, read + 1.5) == FRESH


def test_a_reload_moves_the_epoch_but_not_the_generation(clock: Clock) -> None:
    f = freshness(clock)
    generation, epoch = f.generation, f.epoch
    f.reloaded()
    assert (f.generation, f.epoch) == (generation, epoch + 1)
    f.invalidate()
    assert (f.generation, f.epoch) == (generation + 1, epoch + 2)


async def unreachable() -> str:
    raise Unavailable("gone")


async def test_an_unreachable_read_falls_back_to_a_graced_entry_else_fails_closed(clock: Clock) -> None:
    f = freshness(clock)
    stale = Entry("old", clock.now - 30)
    assert await f.or_graced(unreachable(), stale) == "old"
    with pytest.raises(Unavailable):
        await f.or_graced(unreachable(), Entry("old", clock.now - 70))
    with pytest.raises(Unavailable):
        await f.or_graced(unreachable(), None)
