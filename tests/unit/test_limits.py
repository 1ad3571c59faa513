"""Rate-limit and credit arithmetic, validation, and the no-escalation rule for limits."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.errors import InvalidArgument, PermissionDenied
from keygate.domain.limits import (
    MAX_RATE_LIMITS,
    Credits,
    RateLimit,
    credit_grant,
    ensure_limits_within,
    lease_grant,
    limits_of,
    refilled,
    validate_cost,
    validate_credits,
    validate_rate_limits,
    window_start_ms,
)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_windows_are_aligned_to_the_epoch():
    assert window_start_ms(61_500, 60_000) == 60_000
    assert window_start_ms(60_000, 60_000) == 60_000
    assert window_start_ms(59_999, 60_000) == 0


def test_lease_is_a_sixteenth_of_the_limit_then_shrinks_with_what_remains():
    assert lease_grant(1600, 0, 1) == 100
    assert lease_grant(1600, 1400, 1) == 50  # 200 left: a quarter of it
    assert lease_grant(1600, 1599, 1) == 1
    assert lease_grant(1600, 1600, 1) == 0
    assert lease_grant(10, 0, 1) == 1
    assert lease_grant(100, 95, 7) == 5  # never beyond what remains, even for a larger cost


@given(limit=st.integers(1, 10_000), wants=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 50)), max_size=300),
       spent=st.lists(st.integers(0, 3), max_size=300))
def test_no_interleaving_of_grants_admits_beyond_the_limit(limit, wants, spent):
    """Four replicas take leases in any order and spend from them in any order: the shared counter never
    passes the limit, and neither does what the replicas admit."""
    used = 0
    leases = [0, 0, 0, 0]
    admitted = 0
    for (replica, want), spender in zip(wants, spent + [0] * len(wants), strict=False):
        granted = lease_grant(limit, used, want)
        assert 0 <= granted <= limit - used
        if used < limit:
            assert granted >= 1
        used += granted
        leases[replica] += granted
        if leases[spender]:
            leases[spender] -= 1
            admitted += 1
        assert used <= limit and admitted <= limit


@given(balance=st.integers(0, 10**6), steps=st.lists(st.tuples(st.booleans(), st.integers(1, 1000)), max_size=200))
def test_credits_never_go_below_zero(balance, steps):
    """Any sequence of leases (cost up to 1000) and returns of a lease's unused part."""
    held: list[int] = []
    for take, want in steps:
        if take or not held:
            granted = credit_grant(balance, want)
            assert 0 <= granted <= balance
            balance -= granted
            held.append(granted)
        else:
            balance += held.pop() // 2  # half of it was used
        assert balance >= 0


def test_credit_lease_is_a_64th_of_the_balance_but_at_least_the_cost():
    assert credit_grant(6400, 1) == 100
    assert credit_grant(10, 1) == 1
    assert credit_grant(10, 5) == 5
    assert credit_grant(3, 5) == 3  # the engine refuses: less than the cost
    assert credit_grant(0, 1) == 0


def test_refill_sets_the_balance_and_skips_missed_refills():
    credits = Credits(3, 100, HOUR, NOW)
    assert refilled(credits, NOW - timedelta(seconds=1)) == (3, NOW)
    assert refilled(credits, NOW) == (100, NOW + HOUR)
    assert refilled(credits, NOW + 5 * HOUR + MINUTE) == (100, NOW + 6 * HOUR)
    assert refilled(Credits(3), NOW) == (3, None)


def test_a_key_without_limits_has_none():
    assert limits_of((), None) is None
    assert limits_of((), Credits(5)).credits
    assert limits_of((RateLimit("a", 1, MINUTE),), None).rate_limits[0].limit == 1


@pytest.mark.parametrize(("limits", "field"), [
    ([RateLimit("A", 1, MINUTE)], "rate_limits[0].name"),
    ([RateLimit("a", 1, MINUTE), RateLimit("a", 2, HOUR)], "rate_limits[1].name"),
    ([RateLimit("a", 0, MINUTE)], "rate_limits[0].limit"),
    ([RateLimit("a", 1, timedelta(milliseconds=500))], "rate_limits[0].window"),
    ([RateLimit("a", 1, timedelta(seconds=1.5))], "rate_limits[0].window"),
    ([RateLimit("a", 1, timedelta(days=31))], "rate_limits[0].window"),
    ([RateLimit("a", 1, -MINUTE)], "rate_limits[0].window"),
    ([RateLimit(f"l{i}", 1, MINUTE) for i in range(MAX_RATE_LIMITS + 1)], "rate_limits"),
])
def test_bad_rate_limits_name_the_field(limits, field):
    with pytest.raises(InvalidArgument) as raised:
        validate_rate_limits(limits)
    assert raised.value.field == field


@pytest.mark.parametrize(("credits", "field"), [
    (Credits(-1), "credits.remaining"),
    (Credits(1, 5), "credits.refill_amount"),
    (Credits(1, 0, HOUR), "credits.refill_amount"),
    (Credits(1, -1, HOUR), "credits.refill_amount"),
    (Credits(1, 5, timedelta(milliseconds=10)), "credits.refill_interval"),
    (Credits(1, 5, -HOUR), "credits.refill_interval"),
])
def test_bad_credits_name_the_field(credits, field):
    with pytest.raises(InvalidArgument) as raised:
        validate_credits(credits)
    assert raised.value.field == field


def test_good_limits_pass_and_refill_time_is_not_taken_from_the_caller():
    assert validate_rate_limits([RateLimit("per-min", 100, MINUTE), RateLimit("day", 10_000, timedelta(days=1))])
    assert validate_credits(Credits(10, 10, HOUR, NOW)) == Credits(10, 10, HOUR, None)


def test_cost_zero_means_one_and_is_bounded():
    assert validate_cost(0) == 1
    assert validate_cost(7) == 7
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgument, match="cost"):
            validate_cost(bad)


PER_MINUTE = RateLimit("m", 100, MINUTE)


@pytest.mark.parametrize(("new", "allowed"), [
    ([], False),  # no limit at all
    ([RateLimit("m", 101, MINUTE)], False),  # higher limit
    ([RateLimit("m", 100, timedelta(seconds=30))], False),  # shorter window: 200 per minute
    ([RateLimit("m", 100, timedelta(seconds=90))], False),  # not a multiple: straddles
    ([RateLimit("m", 100, MINUTE)], True),
    ([RateLimit("m", 50, HOUR)], True),
    ([RateLimit("x", 1000, timedelta(seconds=1)), RateLimit("m", 100, 2 * MINUTE)], True),
])
def test_a_limited_caller_cannot_make_a_looser_key(new, allowed):
    if allowed:
        ensure_limits_within(new, None, [([PER_MINUTE], None)])
    else:
        with pytest.raises(PermissionDenied):
            ensure_limits_within(new, None, [([PER_MINUTE], None)])


@pytest.mark.parametrize(("new", "allowed"), [
    (None, False),
    (Credits(101), False),
    (Credits(100), True),
    (Credits(10, 50, 2 * HOUR), True),
    (Credits(10, 51, HOUR), False),
    (Credits(10, 50, timedelta(minutes=30)), False),
])
def test_a_caller_with_credits_cannot_make_a_key_with_more(new, allowed):
    held = [((), Credits(100, 50, HOUR))]
    if allowed:
        ensure_limits_within((), new, held)
    else:
        with pytest.raises(PermissionDenied):
            ensure_limits_within((), new, held)


def test_a_caller_that_never_refills_cannot_give_a_refill():
    with pytest.raises(PermissionDenied):
        ensure_limits_within((), Credits(1, 1, HOUR), [((), Credits(100))])


def test_an_update_may_keep_what_the_key_had_or_what_the_caller_allows():
    key_own = ([RateLimit("m", 500, MINUTE)], None)
    ensure_limits_within([RateLimit("m", 500, MINUTE)], None, [([PER_MINUTE], None), key_own])
    ensure_limits_within([], None, [([], None)])  # an unlimited caller allows anything
    with pytest.raises(PermissionDenied):
        ensure_limits_within([RateLimit("m", 501, MINUTE)], None, [([PER_MINUTE], None), key_own])


@given(caller=st.lists(st.tuples(st.integers(1, 8), st.sampled_from([1, 2, 3, 60, 90, 3600])), max_size=3),
       new=st.lists(st.tuples(st.integers(1, 8), st.sampled_from([1, 2, 3, 60, 90, 3600])), max_size=3),
       start=st.integers(0, 10**6), admitted=st.lists(st.integers(0, 10**4), max_size=50))
def test_an_accepted_key_never_admits_more_than_the_caller_in_any_caller_window(caller, new, start, admitted):
    """Whatever the new key is accepted with, the admissions it allows (greedy, as many as its own limits
    let through, at any instants) never exceed any of the caller's limits in any of the caller's windows."""
    held = [RateLimit(f"c{i}", n, timedelta(seconds=w)) for i, (n, w) in enumerate(caller)]
    made = [RateLimit(f"n{i}", n, timedelta(seconds=w)) for i, (n, w) in enumerate(new)]
    try:
        ensure_limits_within(made, None, [(held, None)])
    except PermissionDenied:
        return
    if not made:
        assert not held
        return
    counts: dict[tuple[str, int], int] = {}
    instants = sorted(start + a for a in admitted)
    passed = []
    for t in instants:
        ms = t * 1000
        windows = [(limit.name, window_start_ms(ms, limit.window_ms)) for limit in made]
        if all(counts.get(w, 0) < limit.limit for w, limit in zip(windows, made, strict=True)):
            for w in windows:
                counts[w] = counts.get(w, 0) + 1
            passed.append(ms)
    for limit in held:
        per_window: dict[int, int] = {}
        for ms in passed:
            w = window_start_ms(ms, limit.window_ms)
            per_window[w] = per_window.get(w, 0) + 1
        assert max(per_window.values(), default=0) <= limit.limit
