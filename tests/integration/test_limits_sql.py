"""The SQL twins of domain.limits (migrations/0005_limits.sql) give the same answers as the Python."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from keygate.domain.limits import Credits, credit_grant, lease_grant, refilled

LIMITS = [1, 2, 3, 15, 16, 17, 100, 1601, 10**12]
WANTS = [1, 2, 7, 1000]


async def test_lease_grant_in_sql_is_the_domain_function(db):
    cases = [(limit, used, want) for limit, want in itertools.product(LIMITS, WANTS)
             for used in sorted({0, 1, limit // 3, limit // 2, limit - 5, limit - 1, limit}) if used >= 0]
    rows = await db.fetch("SELECT keygate_lease_grant(l, u, w) AS g FROM unnest($1::bigint[], $2::bigint[], "
                          "$3::bigint[]) AS t(l, u, w)", *map(list, zip(*cases, strict=True)))
    assert [r["g"] for r in rows] == [lease_grant(*case) for case in cases]


async def test_credit_grant_in_sql_is_the_domain_function(db):
    cases = list(itertools.product([0, 1, 5, 63, 64, 65, 6400, 10**15], WANTS))
    rows = await db.fetch("SELECT keygate_credit_grant(b, w) AS g FROM unnest($1::bigint[], $2::bigint[]) AS t(b, w)",
                          *map(list, zip(*cases, strict=True)))
    assert [r["g"] for r in rows] == [credit_grant(*case) for case in cases]


async def test_refill_in_sql_is_the_domain_function(db):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for interval in (timedelta(seconds=1), timedelta(minutes=7), timedelta(days=1)):
        for at in (start - timedelta(seconds=1), start, start + interval / 2, start + 5 * interval,
                   start + 5 * interval + timedelta(microseconds=1)):
            due, next_refill = await db.fetchrow(
                "SELECT keygate_refill_due($1, $2, $3), keygate_next_refill($1, $2, $3)",
                interval // timedelta(milliseconds=1), start, at)
            balance, expected_next = refilled(Credits(3, 9, interval, start), at)
            assert (due, next_refill) == (balance == 9, expected_next), (interval, at)
