"""The SQL of rate limits and credits: atomic lease grants (one statement each, `... RETURNING`),
returns of unused leases, and the credits row a key's owner sets.

A grant commits the consumption when it is made: a server that dies with a lease in hand loses
that lease's unused part for the window (rate limits) or until a refill (credits), never the other
way round, so no restart can give back credit that was used. The arithmetic is in
keygate_lease_grant / keygate_credit_grant (migrations/0005_limits.sql), twins of
domain.limits.lease_grant / credit_grant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..domain.limits import Credits, RateLimit

_MS = timedelta(milliseconds=1)
Conn = asyncpg.Connection | PoolConnectionProxy  # what the pool hands out (store.postgres)


@dataclass(frozen=True, slots=True)
class RateGrant:
    window_start_ms: int  # the window the row is in now (later than asked: the asker's clock is behind)
    used: int  # leased in that window, this grant included
    granted: int


@dataclass(frozen=True, slots=True)
class CreditGrant:
    remaining: int  # in the store after this grant
    granted: int
    epoch: int  # give back unused credits only within this epoch
    refill_time: datetime | None


_GRANT_RATE = """
INSERT INTO rate_windows AS w (key_id, name, window_start, used, granted)
VALUES ($1, $2, $3::bigint, keygate_lease_grant($4::bigint, 0, $5::bigint), keygate_lease_grant($4, 0, $5))
ON CONFLICT (key_id, name) DO UPDATE SET
    window_start = GREATEST(w.window_start, EXCLUDED.window_start),
    used = CASE WHEN w.window_start < EXCLUDED.window_start THEN EXCLUDED.used
                WHEN w.window_start = EXCLUDED.window_start THEN w.used + keygate_lease_grant($4, w.used, $5)
                ELSE w.used END,
    granted = CASE WHEN w.window_start < EXCLUDED.window_start THEN EXCLUDED.granted
                   WHEN w.window_start = EXCLUDED.window_start THEN keygate_lease_grant($4, w.used, $5)
                   ELSE 0 END
RETURNING window_start, used, granted"""

_BALANCE = ("CASE WHEN keygate_refill_due(refill_interval_ms, refill_time, $3) THEN refill_amount "
            "ELSE remaining END")
_GRANT_CREDITS = f"""
UPDATE key_credits SET
    remaining = {_BALANCE} - keygate_credit_grant({_BALANCE}, $2),
    granted = keygate_credit_grant({_BALANCE}, $2),
    epoch = epoch + keygate_refill_due(refill_interval_ms, refill_time, $3)::int,
    refill_time = keygate_next_refill(refill_interval_ms, refill_time, $3)
WHERE key_id = $1
RETURNING remaining, granted, epoch, refill_time"""


class Leases:
    """The lease statements, on one connection that `Store.leases` bounds as a Check's lookup: the limits
    engine's only way to the budget (it holds no connection, and nothing else of the store)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def grant_rate(self, key_id: UUID, limit: RateLimit, window_start_ms: int, want: int) -> RateGrant:
        row = await self._conn.fetchrow(_GRANT_RATE, key_id, limit.name, window_start_ms, limit.limit, want)
        if row is None:  # an upsert always returns its row
            raise RuntimeError("a rate-limit grant returned no row")
        return RateGrant(row["window_start"], row["used"], row["granted"])

    async def return_rate(self, key_id: UUID, name: str, window_start_ms: int, unused: int) -> None:
        """Give back a lease's unused part, if its window is still the current one (else it has lapsed)."""
        await self._conn.execute("UPDATE rate_windows SET used = GREATEST(0, used - $4) "
                                 "WHERE key_id = $1 AND name = $2 AND window_start = $3",
                                 key_id, name, window_start_ms, unused)

    async def grant_credits(self, key_id: UUID, want: int, now: datetime) -> CreditGrant | None:
        """A credit lease, after any refill due by `now`; None if the key has no credits (any more)."""
        row = await self._conn.fetchrow(_GRANT_CREDITS, key_id, want, now)
        return None if row is None else CreditGrant(row["remaining"], row["granted"], row["epoch"],
                                                    row["refill_time"])

    async def return_credits(self, key_id: UUID, epoch: int, unused: int) -> None:
        """Give back a lease's unused credits, unless a refill or an owner's set has happened since."""
        await self._conn.execute("UPDATE key_credits SET remaining = remaining + $3 WHERE key_id = $1 AND epoch = $2",
                                 key_id, epoch, unused)


async def reset_windows(conn: Conn, key_id: UUID) -> None:
    """New rate limits start fresh windows (in the key's update transaction)."""
    await conn.execute("DELETE FROM rate_windows WHERE key_id = $1", key_id)


async def set_credits(conn: Conn, key_id: UUID, credits: Credits | None) -> None:
    """A key's credits as its owner set them (in the key's create/update transaction): a new epoch
    (outstanding leases are not given back into the new balance), the first refill one interval from
    now; None removes them."""
    if credits is None:
        await conn.execute("DELETE FROM key_credits WHERE key_id = $1", key_id)
        return
    await conn.execute(
        """INSERT INTO key_credits AS c (key_id, remaining, refill_amount, refill_interval_ms, refill_time)
           VALUES ($1, $2, $3, $4::bigint,
                   CASE WHEN $4::bigint > 0 THEN clock_timestamp() + $4::bigint * interval '1 millisecond' END)
           ON CONFLICT (key_id) DO UPDATE SET remaining = EXCLUDED.remaining, refill_amount = EXCLUDED.refill_amount,
               refill_interval_ms = EXCLUDED.refill_interval_ms, refill_time = EXCLUDED.refill_time,
               epoch = c.epoch + 1""",
        key_id, credits.remaining, credits.refill_amount, credits.refill_interval // _MS,
    )


# The credits of a key, for a key's SELECT list (from api_keys); NULL for a key without.
CREDITS_COLUMN = """(SELECT jsonb_build_object('remaining', k.remaining, 'refill_amount', k.refill_amount,
        'refill_interval_ms', k.refill_interval_ms, 'refill_time', extract(epoch FROM k.refill_time) * 1000)
     FROM key_credits k WHERE k.key_id = api_keys.id) AS credits"""


def encode_rate_limits(rate_limits: tuple[RateLimit, ...]) -> str:
    """The api_keys.rate_limits column (jsonb)."""
    return json.dumps([{"name": r.name, "limit": r.limit, "window_ms": r.window // _MS} for r in rate_limits])


def decode_rate_limits(column: str) -> tuple[RateLimit, ...]:
    return tuple(RateLimit(r["name"], r["limit"], r["window_ms"] * _MS) for r in json.loads(column))


def decode_credits(column: str | None) -> Credits | None:
    """The CREDITS_COLUMN of a row."""
    if column is None:
        return None
    c = json.loads(column)
    refill_time = None if c["refill_time"] is None else datetime.fromtimestamp(c["refill_time"] / 1000, tz=UTC)
    return Credits(c["remaining"], c["refill_amount"], c["refill_interval_ms"] * _MS, refill_time)
