"""Rate limits and credits: the fields, their validation, the no-escalation rule, and the pure
window, lease and credit arithmetic the engine (keygate.limits) and the store (store/limits.py) share.

Windows are FIXED and aligned to the Unix epoch: a limit of N per W admits at most N requests in
each interval [k*W, (k+1)*W). Fixed windows need one counter per (key, limit), which a replica can
lease blocks of; a sliding window needs the time of every admission (or two windows and an
estimate), which cannot be split into leases. The price is the known fixed-window burst: up to 2N
across one boundary. Envoy's own rate-limit service counts the same way.

Leases: a replica takes a block of a window's budget from the shared counter (consumption is
committed when leased), then decides in memory. A grant never exceeds what remains of the window,
so the shared counter never passes the limit, whatever the interleaving of grants: admitted <=
leased <= limit in every window. Grants shrink with what remains (`lease_grant`) so that the last
of a window's budget is spread over replicas in small blocks instead of sitting unused in one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import InvalidArgument, PermissionDenied

MAX_RATE_LIMITS = 10
MIN_WINDOW = timedelta(seconds=1)
MAX_WINDOW = timedelta(days=30)
MAX_LIMIT = 10**12
MAX_CREDITS = 10**15
MIN_REFILL_INTERVAL = timedelta(seconds=1)
MAX_REFILL_INTERVAL = timedelta(days=366)
MAX_COST = 1000
RATE_LEASE_FRACTION = 16  # a rate-limit lease is at most 1/16 of the limit ...
CREDIT_LEASE_FRACTION = 64  # ... a credit lease at most 1/64 of the credits left
LEASE_SHARE = 4  # ... and at most 1/4 of what remains (2 servers x 2 workers share the rest)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` requests in each `window` (fixed, epoch-aligned)."""

    name: str
    limit: int
    window: timedelta

    @property
    def window_ms(self) -> int:
        return _ms(self.window)

    def at_least_as_strict_as(self, other: RateLimit) -> bool:
        """Does this limit admit no more than `other` in every one of `other`'s windows?

        True when its limit is no higher and its window a whole multiple of `other`'s: each of
        `other`'s (epoch-aligned) windows then lies inside one of this limit's windows, which admits
        at most `self.limit <= other.limit`. A longer window that is not a multiple (90 s against
        60 s) can straddle: a 60 s window could see two 90 s windows' worth, so it does not count.
        """
        return self.limit <= other.limit and self.window_ms % other.window_ms == 0


@dataclass(frozen=True, slots=True)
class Credits:
    """A usage quota: `remaining` requests' worth, set back to `refill_amount` every `refill_interval`
    (none when the interval is zero). `refill_time` is when the next refill happens (read only).

    Read from the store, `remaining` counts credits leased to servers as spent: it is a lower bound,
    at most one lease per server process below the truth until the leases come back."""

    remaining: int
    refill_amount: int = 0
    refill_interval: timedelta = timedelta(0)
    refill_time: datetime | None = None

    @property
    def refills(self) -> bool:
        return self.refill_interval > timedelta(0)


@dataclass(frozen=True, slots=True)
class Limits:
    """What the engine enforces for one key; None on a Credential that has neither."""

    rate_limits: tuple[RateLimit, ...]
    credits: Credits | None  # as loaded with the key (the live balance is in the store and the leases)


@dataclass(frozen=True, slots=True)
class LimitState:
    """A rate limit as one server sees it after a request: `remaining` is an estimate (the store's count
    at this server's last lease, plus what this server still holds), `reset_time` the window's end."""

    name: str
    limit: int
    window: timedelta
    remaining: int
    reset_time: datetime


@dataclass(frozen=True, slots=True)
class Usage:
    """What Check reports of a limited key: its tightest rate limit and its credits (estimates)."""

    rate_limit: LimitState | None
    credits_remaining: int | None
    credits_refill_time: datetime | None = None  # when the credits are next set back (None: never)


def limits_of(rate_limits: Sequence[RateLimit], credits: Credits | None) -> Limits | None:
    """The Credential's Limits: None (the hot path's one test) for a key with neither."""
    if not rate_limits and credits is None:
        return None
    return Limits(tuple(rate_limits), credits)


def _ms(value: timedelta) -> int:
    return value // timedelta(milliseconds=1)


def window_start_ms(now_ms: int, window_ms: int) -> int:
    """The start of the fixed window `now_ms` falls in."""
    return now_ms - now_ms % window_ms


def lease_grant(limit: int, used: int, want: int) -> int:
    """How much of a window's budget one lease takes: `want` (the caller's cost, at least), capped by
    the lease size (1/RATE_LEASE_FRACTION of the limit, 1/LEASE_SHARE of what remains, at least 1),
    and never more than remains. store/limits.py computes this same expression in SQL."""
    remaining = max(0, limit - used)
    size = max(want, min(math.ceil(limit / RATE_LEASE_FRACTION), math.ceil(remaining / LEASE_SHARE)))
    return min(size, remaining)


def credit_grant(remaining: int, want: int) -> int:
    """How many credits one lease takes: `want` at least, 1/CREDIT_LEASE_FRACTION of the balance at
    most, never more than the balance (so it never goes below zero)."""
    return min(max(want, math.ceil(remaining / CREDIT_LEASE_FRACTION)), max(0, remaining))


def refilled(credits: Credits, now: datetime) -> tuple[int, datetime | None]:
    """The balance and next refill time once every refill due by `now` has happened: a refill sets
    the balance to `refill_amount` (it does not add), so missed refills do not pile up."""
    if not credits.refills or credits.refill_time is None or credits.refill_time > now:
        return credits.remaining, credits.refill_time
    missed = (now - credits.refill_time) // credits.refill_interval + 1
    return credits.refill_amount, credits.refill_time + missed * credits.refill_interval


def validate_rate_limits(limits: Sequence[RateLimit], field: str = "rate_limits") -> tuple[RateLimit, ...]:
    if len(limits) > MAX_RATE_LIMITS:
        raise InvalidArgument(field, f"at most {MAX_RATE_LIMITS} rate limits per key")
    names: set[str] = set()
    for i, limit in enumerate(limits):
        at = f"{field}[{i}]"
        if not _NAME_RE.match(limit.name):
            raise InvalidArgument(f"{at}.name", "must be 1-64 lower-case letters, digits or '_.-', starting "
                                                "with a letter or digit")
        if limit.name in names:
            raise InvalidArgument(f"{at}.name", "names must be unique within a key")
        names.add(limit.name)
        if not 1 <= limit.limit <= MAX_LIMIT:
            raise InvalidArgument(f"{at}.limit", f"must be between 1 and {MAX_LIMIT}")
        if not MIN_WINDOW <= limit.window <= MAX_WINDOW or limit.window % MIN_WINDOW:
            raise InvalidArgument(f"{at}.window", "must be whole seconds, between 1 second and 30 days")
    return tuple(limits)


def validate_credits(credits: Credits | None, field: str = "credits") -> Credits | None:
    if credits is None:
        return None
    if not 0 <= credits.remaining <= MAX_CREDITS:
        raise InvalidArgument(f"{field}.remaining", f"must be between 0 and {MAX_CREDITS}")
    if not 0 <= credits.refill_amount <= MAX_CREDITS:
        raise InvalidArgument(f"{field}.refill_amount", f"must be between 0 and {MAX_CREDITS}")
    interval = credits.refill_interval
    if (interval and not MIN_REFILL_INTERVAL <= interval <= MAX_REFILL_INTERVAL) or interval % MIN_REFILL_INTERVAL:
        raise InvalidArgument(f"{field}.refill_interval", "must be zero (no refill) or whole seconds, "
                                                          "between 1 second and 366 days")
    if bool(interval) != bool(credits.refill_amount):
        raise InvalidArgument(f"{field}.refill_amount", "set refill_amount and refill_interval together")
    return Credits(credits.remaining, credits.refill_amount, interval, None)


def validate_cost(cost: int, field: str = "cost") -> int:
    """A Check's cost in credits: 0 (proto3's unset) means 1; at most MAX_COST. Rate limits count
    requests, one each, whatever the cost."""
    if cost == 0:
        return 1
    if not 1 <= cost <= MAX_COST:
        raise InvalidArgument(field, f"must be between 1 and {MAX_COST} (0 or unset: 1)")
    return cost


def ensure_limits_within(rate_limits: Sequence[RateLimit], credits: Credits | None,
                         holders: Sequence[tuple[Sequence[RateLimit], Credits | None]]) -> None:
    """No escalation: the new limits must be at least as strict as one holder's (the caller's, or on
    an update the key's own, so keeping or narrowing a key's limits is always allowed).

    At least as strict as a holder means: for each of the holder's rate limits, one new limit at least
    as strict (`RateLimit.at_least_as_strict_as`); and, if the holder has credits, credits too, with no
    more remaining than the holder has, and (if the holder refills) a refill of no more per interval
    and an interval a whole multiple of the holder's; a holder that never refills allows no refill.
    A holder with neither limits nor credits allows anything.
    """
    problems = [_looser(rate_limits, credits, *holder) for holder in holders]
    if all(problems):
        raise PermissionDenied(str(problems[0]))


def _looser(rate_limits: Sequence[RateLimit], credits: Credits | None,
            held: Sequence[RateLimit], held_credits: Credits | None) -> str | None:
    """Why the new limits are looser than (held, held_credits); None if they are not."""
    for limit in held:
        if not any(new.at_least_as_strict_as(limit) for new in rate_limits):
            return (f"the calling key is limited to {limit.limit} per {limit.window}: the key needs a rate limit "
                    "at least as strict (no higher limit, a window a whole multiple of that one)")
    if held_credits is None:
        return None
    if credits is None:
        return "the calling key has credits: the key needs credits too"
    if credits.remaining > held_credits.remaining:
        return f"credits.remaining may not exceed the calling key's own ({held_credits.remaining})"
    if credits.refills and not (
        held_credits.refills and credits.refill_amount <= held_credits.refill_amount
        and credits.refill_interval % held_credits.refill_interval == timedelta(0)
    ):
        return "credits may refill no more, and no more often, than the calling key's own"
    return None
