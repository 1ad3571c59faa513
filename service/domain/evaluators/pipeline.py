"""The ordered rules, and the one place the remembered-decision key is made.

Order: expiry, disabled, IP allow-list, workspace, scope, permission, then the binding (on bindings
loaded only for what every earlier rule allowed), then the meters (stateful; only for an allowed
request, never remembered). The first rule that refuses is the answer, so a key learns about a
later rule only once it passes the earlier ones.

The remembered-decision key is made here only. The pipeline refuses to start unless the CheckItem's
fields are exactly the facts its rules declare: a field no rule reads would split the memo for nothing,
and a rule reading an input the key lacks would be bypassed by recall (two requests differing only in
it would share one remembered answer). Likewise every declared key datum must be a Credential field,
the data the cache invalidates on a key change.

Facts read only by `keyed_when` rules (the client address, read by the IP allow-list for a key with
networks) are the CheckItem's last fields. The memo is asked first by the `base_key` (key digest, the
item without them); if what it holds was decided for a key with such a datum, the answer depends on
them, and the memo is asked again by the `full_key` (key digest, the whole item). A key without the
datum is thus remembered once per question, not once per client address; one with it, per address.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import datetime
from operator import attrgetter

from ..decision import Credential, Decision
from ..resources import Target
from .base import FACTS, CheckItem, Declares, Evaluator, Meter, Question
from .binding import BINDING, BindingRule
from .disabled import DISABLED
from .expiry import EXPIRY
from .ip import ALLOWED_NETWORKS
from .permission import PERMISSION
from .scope import SCOPE
from .workspace import WORKSPACE

KEY_DATA = frozenset(f.name for f in fields(Credential))

# The rules about the key itself, whatever it asks for: all a KeyService caller's key must pass to
# authenticate (what it may then do is KeyAdmin's, by permission and scope).
KEY_RULES: tuple[Evaluator, ...] = (EXPIRY, DISABLED, ALLOWED_NETWORKS)
RULES: tuple[Evaluator, ...] = (*KEY_RULES, WORKSPACE, SCOPE, PERMISSION)

RecallKey = tuple[bytes, tuple[str, ...]]
_NO_TARGET = Target("", "", ())


def key_verdict(credential: Credential, client_address: str, now: datetime) -> Decision | None:
    """The key's own verdict (KEY_RULES), whatever it asks for: None if it is live and may be used from
    `client_address`, else why not. For a KeyService caller, before KeyAdmin decides what it may do."""
    question = Question(CheckItem("", "", "", client_address), _NO_TARGET, credential.workspace_id, now)
    for rule in KEY_RULES:
        refused = rule.evaluate(credential, question)
        if refused is not None:
            return refused
    return None


class Pipeline:
    def __init__(self, rules: Sequence[Evaluator] = RULES, binding: BindingRule = BINDING,
                 meters: Sequence[Meter] = ()) -> None:
        declared: list[Declares] = [*rules, binding, *meters]
        facts = frozenset().union(*(r.facts for r in declared))
        if facts != FACTS:
            raise ValueError(f"CheckItem fields {sorted(FACTS)} must be exactly the facts the rules read "
                             f"({sorted(facts)}): the remembered-decision key is the whole CheckItem")
        unknown = frozenset().union(*(r.key_data for r in declared)) - KEY_DATA
        if unknown:
            raise ValueError(f"rules read key data a Credential does not hold: {sorted(unknown)}")
        self._checks = tuple(rule.evaluate for rule in rules)  # bound once: no attribute lookup per request
        self._binding = binding
        self._meters = tuple(meters)
        keyed: list[Evaluator] = [r for r in (*rules, binding) if r.keyed_when]
        gates = tuple(dict.fromkeys(r.keyed_when for r in keyed))
        if not set(gates) <= KEY_DATA:
            raise ValueError(f"keyed_when must name Credential fields: {sorted(set(gates) - KEY_DATA)}")
        # Truthy when a credential's decisions depend on the inputs only `keyed_when` rules read (see
        # `keyed`). On the hot path: one C-level attribute read for the usual single gate.
        self.gated: Callable[[Credential], object] = (
            attrgetter(gates[0]) if len(gates) == 1 else lambda c: any(getattr(c, g) for g in gates))
        always = frozenset().union(*(r.facts for r in declared if r not in keyed))
        gated = frozenset().union(*(r.facts for r in keyed)) - always
        self._base_len = len(CheckItem._fields) - len(gated)
        if set(CheckItem._fields[self._base_len:]) != gated:
            raise ValueError(f"CheckItem must end with the facts only keyed_when rules read: {sorted(gated)}")

    def base_key(self, key_digest: bytes, item: CheckItem) -> RecallKey:
        """Where a decision is remembered for every key: the key digest and every input an unconditional
        rule reads, as it arrived (a canonical Target maps from many spellings, never to two)."""
        return key_digest, item[:self._base_len]

    @staticmethod
    def full_key(key_digest: bytes, item: CheckItem) -> RecallKey:
        """Where a decision is remembered for a key holding a `keyed_when` datum: every input."""
        return key_digest, item

    def keyed(self, credential: Credential | None) -> bool:
        """Does a decision for this credential depend on the inputs only `keyed_when` rules read?"""
        return credential is not None and bool(self.gated(credential))

    def decide(self, credential: Credential, question: Question) -> Decision:
        """Every pure rule but the binding; an OK here still needs `bind` when `binding_slot` says so."""
        for check in self._checks:
            refused = check(credential, question)
            if refused is not None:
                return refused
        return credential.allowed_decision

    def binding_slot(self, decision: Decision, question: Question) -> tuple[str, str] | None:
        """The (workspace, resource) whose bindings the decision still depends on: only for what the other
        rules allowed."""
        return self._binding.slot(question) if decision.allowed else None

    def bind(self, decision: Decision, question: Question) -> Decision:
        """The binding rule on `question.bindings`, applied to what `decide` allowed."""
        if not question.bindings or not decision.allowed or decision.credential is None:
            return decision  # no binding, none governs
        return self._binding.evaluate(decision.credential, question) or decision

    def metered(self, credential: Credential) -> bool:
        """Does a meter apply to this key? Then its allowed decisions are charged and never remembered."""
        return any(meter.applies(credential) for meter in self._meters)

    async def charge(self, allowed: Decision, question: Question) -> Decision:
        """Run the meters that apply, in order, on an allowed decision. A refusal gives back what the
        earlier meters took, so a request refused by one limit consumes nothing from the others."""
        credential = allowed.credential
        if credential is None:
            return allowed
        charged: list[Meter] = []
        for meter in self._meters:
            if not meter.applies(credential):
                continue
            answer = await meter.charge(credential, question)
            if answer is not None and not answer.allowed:
                for earlier in reversed(charged):
                    await earlier.refund(credential, question)
                return answer
            charged.append(meter)
            allowed = answer or allowed
        return allowed
