"""Identify and decide: the two phases every authorization request shares.

`target` turns the request into its canonical Target (the resource model, one spelling per
resource); `identify` turns a presented key into a Credential (shape and checksum first, so a
malformed key costs no lookup; then the cache, then the store); `decide` and
`bound_elsewhere` are the pure domain rules. Check, BatchCheck, the KeyService's caller
authentication and the Envoy servicer differ only in how they take the key from the request
and render the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .cache.keys import MISS, KeyCache
from .clock import Clock, utcnow
from .domain.decision import Code, Credential, Decision, bound_elsewhere, decide, key_state
from .domain.errors import InvalidArgument, Unauthenticated
from .domain.keys import MAX_KEY_LEN, KeyFormat, Shape, digest
from .domain.limits import MAX_COST, validate_cost
from .domain.permissions import Catalog
from .domain.policy import validate_workspace_id
from .domain.resources import Target, target
from .limits.engine import LimitsMeter
from .usage import UsageRecorder

MAX_BATCH = 100
_MISSING = Decision(Code.KEY_MISSING, "no API key was presented")
_MALFORMED = Decision(Code.KEY_MALFORMED, "the API key is malformed (bad shape or checksum)")
_NOT_FOUND = Decision(Code.KEY_NOT_FOUND, "the API key is not known")


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One question as it arrived: any spelling. `Authorizer.target` makes it canonical."""

    resource: str
    action: str
    workspace_id: str = ""
    cost: int = 0  # credits, for a key with credits: 0 (unset) = 1


class Authorizer:
    def __init__(self, cache: KeyCache, catalog: Catalog, key_format: KeyFormat, usage: UsageRecorder,
                 meter: LimitsMeter, clock: Clock = utcnow) -> None:
        self._cache = cache
        self._meter = meter
        self._catalog = catalog
        self._format = key_format
        self._usage = usage
        self._clock = clock

    def target(self, item: CheckItem, at: str = "") -> Target:
        """The item's canonical Target; InvalidArgument for a malformed request, naming the field
        (`at` prefixes it: `items[2].`)."""
        found = target(self._catalog, item.resource, item.action, at)
        if item.workspace_id:
            validate_workspace_id(item.workspace_id, f"{at}workspace_id")
        if item.cost:
            validate_cost(item.cost, f"{at}cost")
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
        if credential is MISS:
            credential = await self._cache.credential(key_digest)
        return _NOT_FOUND if credential is None else credential  # type: ignore[return-value]

    async def authenticate(self, api_key: str) -> Credential:
        """A live Credential for a caller of the admin API; Unauthenticated otherwise."""
        identified = await self.identify(api_key)
        if isinstance(identified, Decision):
            raise Unauthenticated(identified.reason)
        dead = key_state(identified, self._clock())
        if dead is not None:
            raise Unauthenticated(dead.reason)
        return identified

    def recall(self, api_key: str, item: CheckItem) -> Decision | None:
        """The hot path, without a coroutine: the decision remembered for exactly this question (by the
        spelling that arrived, which maps to one canonical Target), if the cache entries it rests on are
        still fresh and unchanged and no expiry has passed; None otherwise (then `check`).

        Servicers call this first and await `check` only on None: a cached Check then creates no
        coroutine and awaits nothing, which measured as a large share of its cost in a loaded server.
        A key with limits is metered here too, from the leases in hand (None when one needs a refill).
        """
        if not api_key or len(api_key) > MAX_KEY_LEN:
            return None
        now = self._clock()
        decision = self._cache.recall(_question(digest(api_key), item), now)
        if decision is not None and decision.allowed:
            if decision.credential.limits is not None:  # type: ignore[union-attr]
                if not 0 <= item.cost <= MAX_COST:
                    return None  # `check` names the field
                decision = self._meter.admit_now(decision, item.cost or 1, now)
                if decision is None or not decision.allowed:
                    return decision
            self._usage.record(decision.credential.key_id, now)  # type: ignore[union-attr]
        return decision

    async def check(self, api_key: str, item: CheckItem) -> Decision:
        """Check, decided afresh from the cached (or stored) key and bindings, and remembered for
        `recall`; callers try `recall` first. InvalidArgument for a malformed request."""
        if not api_key or len(api_key) > MAX_KEY_LEN:
            self.target(item)
            return _MISSING if not api_key else _MALFORMED
        now = self._clock()
        key_digest = digest(api_key)
        wanted = self.target(item)
        identified = await self.identify(api_key, key_digest)
        if isinstance(identified, Decision):
            return identified
        workspace = item.workspace_id or identified.workspace_id
        decision = decide(identified, wanted, workspace, now)
        bindings_slot = _bindings_slot(decision, wanted, workspace)
        if bindings_slot is not None:
            bindings = self._cache.peek_bindings(*bindings_slot)
            if bindings is MISS:
                bindings = await self._cache.bindings(*bindings_slot)
            decision = bound_elsewhere(decision, wanted, bindings)  # type: ignore[arg-type]
        self._cache.remember(_question(key_digest, item), decision, key_digest, bindings_slot)
        if decision.allowed and identified.limits is not None:
            decision = await self._metered(decision, item.cost, now)
        if decision.allowed:
            self._usage.record(decision.credential.key_id, now)  # type: ignore[union-attr]
        return decision

    async def _metered(self, allowed: Decision, cost: int, now: datetime) -> Decision:
        """The limits meter, last of all rules (what it remembers is the decision before it)."""
        cost = cost or 1
        return self._meter.admit_now(allowed, cost, now) or await self._meter.admit(allowed, cost, now)

    async def check_batch(self, api_key: str, items: Sequence[CheckItem]) -> list[Decision]:
        """One decision per item, for one key identified once; the bindings the decisions need are
        read in one round trip. InvalidArgument (before any lookup) for a malformed item."""
        wanted = self.targets(items)
        identified = await self.identify(api_key)
        if isinstance(identified, Decision):
            return [identified] * len(items)
        now = self._clock()
        workspaces = [item.workspace_id or identified.workspace_id for item in items]
        decisions = [decide(identified, t, w, now) for t, w in zip(wanted, workspaces, strict=True)]
        slots = [_bindings_slot(d, t, w) for d, t, w in zip(decisions, wanted, workspaces, strict=True)]
        needed = [s for s in slots if s is not None]
        if needed:
            bindings = await self._cache.bindings_many(needed)
            decisions = [d if s is None else bound_elsewhere(d, t, bindings[s])
                         for d, t, s in zip(decisions, wanted, slots, strict=True)]
        if identified.limits is not None:  # item by item, in order: each allowed item is one request
            decisions = [await self._metered(d, item.cost, now) if d.allowed else d
                         for d, item in zip(decisions, items, strict=True)]
        if any(d.allowed for d in decisions):
            self._usage.record(identified.key_id, now)
        return decisions


def _question(key_digest: bytes, item: CheckItem) -> tuple[bytes, str, str, str]:
    """Where a decision is remembered: the key and the question as it arrived (a plain tuple, whose
    hash is C code; a dataclass's is Python)."""
    return key_digest, item.resource, item.action, item.workspace_id


def _bindings_slot(decision: Decision, wanted: Target, workspace: str) -> tuple[str, str] | None:
    """The (workspace, resource) whose bindings the decision still depends on: only for a resource
    the other rules allow, so a request refused anyway costs no bindings lookup."""
    if decision.allowed and wanted.resource and workspace:
        return workspace, wanted.resource
    return None
