"""The limits meter: rate limits and credits enforced across every worker and replica, decided in memory.

Each process leases blocks of a key's budget from PostgreSQL (store/limits.py: a window's budget per
rate limit, credits) and spends them in memory: the common case takes no await and no lookup, and
only a lease refill touches the database, bounded by the lookup timeout. Consumption is committed
when leased, so the shared counters never pass a limit, and a restart loses no consumed credit.
On shutdown `close` gives back what is left of the leases.

The meter runs last, on a request every other rule allowed, and it checks every limit before it
consumes from any (Unkey #1995): a request refused by one limit spends nothing from the others.

When the database cannot be reached for a refill: credits fail closed (UNAVAILABLE); rate limits
fail closed too unless the operator chose `KEYGATE_RATE_LIMIT_OUTAGE=open`, which admits without
counting until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID

import structlog

from ..domain.decision import Code, Credential, Decision
from ..domain.errors import Unavailable
from ..domain.evaluators.base import Question
from ..domain.limits import Limits, LimitState, Usage, window_start_ms
from ..store.interface import LeaseStore
from ..store.limits import CreditGrant

log = structlog.get_logger(__name__)
_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_KEYS = 100_000  # keys whose leases a process holds at once


class Outage(enum.Enum):
    """What a rate-limited key gets while the database is unreachable (credits always fail closed)."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(slots=True)
class _RateLease:
    window_start: int = -1  # ms; -1: none yet
    left: int = 0  # leased to this process and not yet spent
    used: int = 0  # the store's count at the last grant
    exhausted: bool = False  # the store had nothing left in this window


@dataclass(slots=True)
class _CreditLease:
    left: int = 0
    epoch: int = 0
    remaining: int = 0  # the store's balance at the last grant
    refill_time: datetime | None = None
    leased: bool = False  # at least one grant made (else the balance is unknown)


@dataclass(slots=True)
class _KeyLeases:
    limits: Limits  # as last loaded; a key reloaded with other terms gets new leases (`_start`)
    rates: list[_RateLease]
    credits: _CreditLease | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LimitsMeter:
    """The Meter (domain.evaluators.base) for rate limits and credits, last of the rules."""

    facts: ClassVar[frozenset[str]] = frozenset()  # reads Question.cost, never remembered
    key_data: ClassVar[frozenset[str]] = frozenset({"limits", "key_id"})

    def __init__(self, store: LeaseStore, outage: Outage = Outage.CLOSED) -> None:
        self._store = store
        self._outage = outage
        self._keys: dict[UUID, _KeyLeases] = {}  # in the order first seen (or changed): the oldest go first
        self._returning: set[asyncio.Task[None]] = set()

    def applies(self, credential: Credential) -> bool:
        return credential.limits is not None

    async def charge(self, credential: Credential, question: Question) -> Decision | None:
        """OK (carrying the usage to report) having consumed from every limit, or the refusal having
        consumed nothing. From the leases in hand without any wait; otherwise the leases short of this
        request are refilled first, bounded by the lookup timeout. Unavailable when the store cannot be
        reached, unless the key has rate limits only and the operator chose to admit during an outage."""
        cost, now_ms = question.cost, _ms(question.now)
        leases = self._keys.get(credential.key_id)
        if leases is None or leases.limits is not credential.limits:
            leases = self._start(credential)
        elif not leases.lock.locked():  # while a refill is under way, requests queue behind it
            decided = self._decide(leases, credential, cost, now_ms)
            if decided is not None:
                return decided
        async with leases.lock:  # one refill per key at a time, and nothing spends from a lease being refilled
            decided = self._decide(leases, credential, cost, now_ms)
            if decided is not None:
                return decided
            try:
                await self._refill(credential.key_id, leases, cost, question.now, now_ms)
            except Unavailable:
                if self._outage is Outage.OPEN and leases.credits is None:
                    return None
                raise
            decided = self._decide(leases, credential, cost, now_ms)
        if decided is None:  # cannot happen (nothing spends from a lease under refill): fail closed all the same
            raise Unavailable("the key's limits could not be decided; retry shortly")
        return decided

    async def refund(self, credential: Credential, question: Question) -> None:
        """Give back to the leases what `charge` took (a later meter refused the same request)."""
        leases = self._keys.get(credential.key_id)
        if leases is None:
            return
        for lease in leases.rates:
            lease.left += 1
        if leases.credits is not None:
            leases.credits.left += question.cost

    def _start(self, credential: Credential) -> _KeyLeases:
        """The leases of a key seen for the first time (empty), or reloaded from the store: the same ones
        if its terms are unchanged, else fresh ones, the old ones' unused part given back in the
        background. Past MAX_KEYS, the longest-held key's leases go back too. Synchronous, so two
        requests cannot both replace (and both give back) one key's leases."""
        key_id = credential.key_id
        limits: Limits = credential.limits  # type: ignore[assignment]  # the meter applies only to a key with limits
        old = self._keys.pop(key_id, None)
        if old is not None and _terms(old.limits) == _terms(limits):
            old.limits = limits
            self._keys[key_id] = old
            return old
        leases = _KeyLeases(limits, [_RateLease() for _ in limits.rate_limits],
                            None if limits.credits is None else _CreditLease())
        self._keys[key_id] = leases
        if old is not None:
            self._retire(key_id, old)
        if len(self._keys) > MAX_KEYS:
            oldest = next(iter(self._keys))
            self._retire(oldest, self._keys.pop(oldest))
        return leases

    def _retire(self, key_id: UUID, leases: _KeyLeases) -> None:
        task = asyncio.create_task(self._give_back(key_id, leases), name="limits-give-back")
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    def _decide(self, leases: _KeyLeases, credential: Credential, cost: int, now_ms: int) -> Decision | None:
        """All limits checked, then all consumed: a refusal spends nothing."""
        limits = leases.limits
        refill = False
        for limit, lease in zip(limits.rate_limits, leases.rates, strict=True):
            if lease.window_start != window_start_ms(now_ms, limit.window_ms) or lease.left < 1:
                if lease.exhausted and lease.window_start >= window_start_ms(now_ms, limit.window_ms):
                    return Decision(Code.RATE_LIMITED,
                                    f"rate limit {limit.name!r} ({limit.limit} per {limit.window}) reached",
                                    credential, _usage(leases))
                refill = True
        credit = leases.credits
        if credit is not None and credit.left < cost:
            if credit.leased and credit.remaining == 0 and not _refill_due(credit, now_ms):
                return Decision(Code.USAGE_EXCEEDED, "the key has no credits left", credential, _usage(leases))
            refill = True
        if refill:
            return None
        for lease in leases.rates:
            lease.left -= 1
        if credit is not None:
            credit.left -= cost
        return Decision(Code.OK, "allowed", credential, _usage(leases))

    async def _refill(self, key_id: UUID, leases: _KeyLeases, cost: int, now: datetime, now_ms: int) -> None:
        """New leases for every limit short of one request (or of `cost`, for credits), in one connection."""
        async with self._store.leases() as book:
            for limit, lease in zip(leases.limits.rate_limits, leases.rates, strict=True):
                start = window_start_ms(now_ms, limit.window_ms)
                if lease.window_start == start and (lease.left >= 1 or lease.exhausted):
                    continue
                grant = await book.grant_rate(key_id, limit, start, 1)
                if lease.window_start != grant.window_start_ms:
                    lease.left = 0
                lease.window_start, lease.used = grant.window_start_ms, grant.used
                lease.left += grant.granted
                lease.exhausted = grant.granted == 0
            credit = leases.credits
            if credit is not None and credit.left < cost:
                found = await book.grant_credits(key_id, cost - credit.left, now)
                if found is None:  # the credits were removed; the key reloads without them
                    found = CreditGrant(0, 0, credit.epoch, None)
                if found.epoch != credit.epoch:
                    credit.left = 0  # leftovers of the balance before a refill or an owner's set
                credit.left += found.granted
                credit.epoch, credit.remaining, credit.refill_time = found.epoch, found.remaining, found.refill_time
                credit.leased = True

    async def _give_back(self, key_id: UUID, leases: _KeyLeases) -> None:
        """Return what is left of a key's leases (rate leases only while their window lasts). Each lease is
        emptied before the first await, so nothing spends what is being given back; if the store cannot
        be reached, the leftovers are lost (never given back twice: under-use, not over-use)."""
        now_ms = _ms(datetime.now(UTC))
        rates = []
        for limit, lease in zip(leases.limits.rate_limits, leases.rates, strict=True):
            if lease.left > 0 and lease.window_start == window_start_ms(now_ms, limit.window_ms):
                rates.append((limit.name, lease.window_start, lease.left))
            lease.left = 0
        credit = leases.credits
        credits = None
        if credit is not None and credit.left > 0:
            credits, credit.left = (credit.epoch, credit.left), 0
        if not rates and credits is None:
            return
        with contextlib.suppress(Unavailable):
            async with self._store.leases() as book:
                for name, start, unused in rates:
                    await book.return_rate(key_id, name, start, unused)
                if credits is not None:
                    await book.return_credits(key_id, *credits)

    async def close(self) -> None:
        """Give back every lease's unused part (on shutdown): a failure loses only leased budget."""
        keys, self._keys = self._keys, {}
        for key_id, leases in keys.items():
            await self._give_back(key_id, leases)
        if self._returning:
            await asyncio.wait(self._returning)


def _terms(limits: Limits) -> tuple[object, ...]:
    """What a key's leases depend on: its rate limits and whether (and how) its credits refill; not the
    balance, which changes as credits are spent."""
    credits = limits.credits
    return limits.rate_limits, None if credits is None else (credits.refill_amount, credits.refill_interval)


def _ms(now: datetime) -> int:
    return (now - _EPOCH) // _MS


def _refill_due(credit: _CreditLease, now_ms: int) -> bool:
    return credit.refill_time is not None and _ms(credit.refill_time) <= now_ms


def _usage(leases: _KeyLeases) -> Usage:
    """The tightest rate limit (fewest left, estimated) and the credits left (estimated)."""
    tightest: LimitState | None = None
    for limit, lease in zip(leases.limits.rate_limits, leases.rates, strict=True):
        remaining = max(0, limit.limit - lease.used) + lease.left
        reset = _EPOCH + (lease.window_start + limit.window_ms) * _MS
        if tightest is None or (remaining, tightest.reset_time) < (tightest.remaining, reset):
            tightest = LimitState(limit.name, limit.limit, limit.window, remaining, reset)
    credit = leases.credits
    if credit is None:
        return Usage(tightest, None)
    return Usage(tightest, credit.remaining + credit.left, credit.refill_time)
