"""The token bucket that caps how many unknown keys a second a flood may send to the database."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.cache.budget import Budget

RATE = 20.0

# Nondecreasing request times: gaps of 0 to 2 seconds, a flood being many gaps of ~0.
gaps = st.lists(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=2.0)), min_size=1, max_size=400)


@settings(max_examples=200, deadline=None)
@given(gaps=gaps, rate=st.sampled_from([1.0, 5.0, RATE, 100.0]))
def test_no_interval_grants_more_than_the_burst_plus_the_rate(gaps: list[float], rate: float) -> None:
    """Whatever the pattern of requests, any window of T seconds grants at most burst + rate * T."""
    budget = Budget(rate, rate, now=0.0)
    granted: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        if budget.take(now):
            granted.append(now)
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= rate + rate * (granted[j] - start) + 1e-6


@settings(max_examples=100, deadline=None)
@given(count=st.integers(min_value=1, max_value=200), slack=st.floats(min_value=0.0, max_value=1.0))
def test_requests_no_faster_than_the_rate_are_all_granted(count: int, slack: float) -> None:
    """Normal traffic, under the rate, is never refused: every unknown key is still confirmed."""
    budget = Budget(RATE, RATE, now=1000.0)
    assert all(budget.take(1000.0 + i * (1 + slack) / RATE) for i in range(count))


def test_a_burst_gets_the_burst_then_the_rate() -> None:
    budget = Budget(RATE, RATE, now=100.0)
    assert sum(budget.take(100.0) for _ in range(1000)) == RATE
    assert not budget.take(100.0)
    assert budget.take(100.0 + 1 / RATE)
    assert sum(budget.take(110.0) for _ in range(1000)) == RATE  # refilled, never beyond the burst


def test_a_clock_that_steps_back_grants_nothing_extra() -> None:
    budget = Budget(1.0, 1.0, now=10.0)
    assert budget.take(10.0)
    assert not budget.take(5.0)
    assert not budget.take(10.5)
    assert budget.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5)])
def test_a_budget_that_could_never_grant_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Budget(rate, burst, now=0.0)
