"""Identify and decide: the two phases every authorization request shares.

`target` turns the request into its canonical Target (the resource model, one spelling per
resource); `identify` turns a presented key into a Credential (shape and checksum first, so a
malformed key costs no lookup; then the cache, then the store); the rules are the evaluators of
`domain.evaluators`, run in order by a Pipeline, which also makes the remembered-decision key.
Check, BatchCheck, the KeyService's caller authentication and the Envoy servicer differ only in how
they take the key from the request and render the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .cache.keys import MISS, KeyCache
from .clock import utc
from .domain.decision import Code, Credential, Decision
from .domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from .domain.evaluators import CheckItem, Pipeline, Question, key_verdict
from .domain.evaluators.ip import client_ip
from .domain.keys import MAX_KEY_LEN, KeyFormat, Shape, digest
from .domain.permissions import Catalog
from .domain.policy import validate_workspace_id
from .domain.resources import Target, target
from .usage import UsageRecorder

MAX_BATCH = 100
_MISSING = Decision(Code.KEY_MISSING, "no API key was presented")
_MALFORMED = Decision(Code.KEY_MALFORMED, "the API key is malformed (bad shape or checksum)")
_OK = Code.OK
_NOT_FOUND = Decision(Code.KEY_NOT_FOUND, "the API key is not known")

T = TypeVar("T")

__all__ = ["MAX_BATCH", "Authorizer", "CheckItem"]


class Authorizer:
    def __init__(self, cache: KeyCache, catalog: Catalog, key_format: KeyFormat, usage: UsageRecorder,
                 clock: Callable[[], float] = time.time, pipeline: Pipeline | None = None) -> None:
        self._cache = cache
        self._pipeline = pipeline or Pipeline()
        self._catalog = catalog
        self._format = key_format
        self._usage = usage
        self._time = clock  # wall clock, seconds: the memo and usage take it as is, rules as a datetime
        # Bound once: `recall` runs on every cached call.
        self._recall, self._base_key = cache.recall, self._pipeline.base_key
        self._gated, self._record_use = self._pipeline.gated, usage.record

    def target(self, item: CheckItem, at: str = "") -> Target:
        """The item's canonical Target; InvalidArgument for a malformed request, naming the field
        (`at` prefixes it: `items[2].`)."""
        found = target(self._catalog, item.resource, item.action, at)
        if item.workspace_id:
            validate_workspace_id(item.workspace_id, f"{at}workspace_id")
        if item.client_address:
            client_ip(item.client_address, "client_address")
        return found

    def targets(self, items: Sequence[CheckItem]) -> list[Target]:
        if len(items) > MAX_BATCH:
            raise InvalidArgument("items", f"at most {MAX_BATCH} items per BatchCheck")
        return [self.target(item, f"items[{i}].") for i, item in enumerate(items)]

    async def identify(self, api_key: str, key_digest: bytes | None = None) -> Credential | Decision:
        """The key's Credential, or the Decision that it cannot be identified."""
        if not api_key:
            return _MISSING
        if self._format.shape(api_key) is Shape.MALFORMED:
            return _MALFORMED
        key_digest = key_digest or digest(api_key)
        credential = self._cache.peek(key_digest)
        # MISS is a plain sentinel, which mypy cannot narrow away: hence the ignores on MISS below
        if credential is MISS:
            credential = await self._cache.credential(key_digest)
        return _NOT_FOUND if credential is None else credential  # type: ignore[return-value]

    async def authenticate(self, api_key: str, client_address: str = "") -> Credential:
        """A live Credential for a caller of the admin API, used from an address its allow-list admits;
        Unauthenticated otherwise (PermissionDenied for the address: the key is known and live)."""
        identified = await self.identify(api_key)
        if isinstance(identified, Decision):
            raise Unauthenticated(identified.reason)
        refused = key_verdict(identified, client_address, utc(self._time()))
        if refused is None:
            return identified
        if refused.code is Code.IP_NOT_ALLOWED:
            raise PermissionDenied(refused.reason)
        raise Unauthenticated(refused.reason)

    def recall(self, api_key: str, item: CheckItem, address: Callable[[T], str] | None = None,
               source: T | None = None) -> Decision | None:
        """The hot path, without a coroutine: the decision remembered for exactly this question (by the
        spelling that arrived, which maps to one canonical Target), if the cache entries it rests on are
        still fresh and unchanged and no expiry has passed; None otherwise (then `check`).

        Servicers call this first and await `check` only on None: a cached Check then creates no
        coroutine and awaits nothing, which measured as a large share of its cost in a loaded server.
        `address(source)`: for a door whose client address is costly to read (Envoy's request), the item
        comes without it and this reads it, only when the remembered decision depends on it (a key with
        allowed_cidrs); a function and its argument rather than a closure, which would be made per call.
        Time is a float here (datetime.now was a visible share of this step).
        """
        if not api_key or len(api_key) > MAX_KEY_LEN:
            return None
        now = self._time()
        key_digest = digest(api_key)
        decision = self._recall(self._base_key(key_digest, item), now)
        if decision is None:
            return None
        credential = decision.credential
        if self._gated(credential):  # type: ignore[arg-type]  # remembered per address too
            if address is not None:
                item = item._replace(client_address=address(source))  # type: ignore[arg-type]
            decision = self._recall(self._pipeline.full_key(key_digest, item), now)
            if decision is None:
                return None
        if decision.code is _OK:
            self._record_use(credential.key_id, now)  # type: ignore[union-attr]  # allowed: has one
        return decision

    async def check(self, api_key: str, item: CheckItem, cost: int = 1) -> Decision:
        """Check, decided afresh from the cached (or stored) key and bindings, and remembered for
        `recall`; callers try `recall` first. InvalidArgument for a malformed request. `cost`: the
        credits an allowed request spends, for a key with credits (validated by the caller)."""
        if not api_key or len(api_key) > MAX_KEY_LEN:
            self.target(item)
            return _MISSING if not api_key else _MALFORMED
        wall = self._time()
        now, key_digest = utc(wall), digest(api_key)
        wanted = self.target(item)
        identified = await self.identify(api_key, key_digest)
        if isinstance(identified, Decision):
            return identified
        pipeline = self._pipeline
        question = Question(item, wanted, item.workspace_id or identified.workspace_id, now, cost)
        decision = pipeline.decide(identified, question)
        bindings_slot = pipeline.binding_slot(decision, question)
        if bindings_slot is not None:
            bindings = self._cache.peek_bindings(*bindings_slot)
            if bindings is MISS:
                bindings = await self._cache.bindings(*bindings_slot)
            question.bindings = bindings  # type: ignore[assignment]
            decision = pipeline.bind(decision, question)
        if decision.allowed and pipeline.metered(identified):
            decision = await pipeline.charge(decision, question)  # stateful: never remembered
        else:
            if pipeline.keyed(identified):  # the base entry then only says: ask by the full key
                self._cache.remember(pipeline.full_key(key_digest, item), decision, key_digest, bindings_slot)
            self._cache.remember(pipeline.base_key(key_digest, item), decision, key_digest, bindings_slot)
        if decision.allowed:
            self._usage.record(decision.credential.key_id, wall)  # type: ignore[union-attr]  # allowed: has one
        return decision

    async def check_batch(self, api_key: str, items: Sequence[CheckItem],
                          costs: Sequence[int] | None = None) -> list[Decision]:
        """One decision per item, for one key identified once; the bindings the decisions need are
        read in one round trip. InvalidArgument (before any lookup) for a malformed item."""
        wanted = self.targets(items)
        identified = await self.identify(api_key)
        if isinstance(identified, Decision):
            return [identified] * len(items)
        wall = self._time()
        now, pipeline = utc(wall), self._pipeline
        questions = [Question(item, t, item.workspace_id or identified.workspace_id, now, cost)
                     for item, t, cost in zip(items, wanted, costs or [1] * len(items), strict=True)]
        decisions = [pipeline.decide(identified, q) for q in questions]
        slots = [pipeline.binding_slot(d, q) for d, q in zip(decisions, questions, strict=True)]
        needed = [s for s in slots if s is not None]
        if needed:
            bindings = await self._cache.bindings_many(needed)
            for question, slot in zip(questions, slots, strict=True):
                if slot is not None:
                    question.bindings = bindings[slot]
            decisions = [pipeline.bind(d, q) for d, q in zip(decisions, questions, strict=True)]
        if pipeline.metered(identified):
            decisions = [await pipeline.charge(d, q) if d.allowed else d
                         for d, q in zip(decisions, questions, strict=True)]
        if any(d.allowed for d in decisions):
            self._usage.record(identified.key_id, wall)
        return decisions

