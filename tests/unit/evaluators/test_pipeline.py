"""The Pipeline: every code in the documented order, the declarations, and the remembered-decision key."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.decision import Code, Credential, Decision
from keygate.domain.evaluators import RULES, CheckItem, Pipeline, Question, key_verdict
from keygate.domain.evaluators.base import FACTS
from keygate.domain.evaluators.binding import BINDING, BindingRule

from .helpers import FUTURE, ME, NOW, PAST, ask, bind, cred

PIPELINE = Pipeline()


def run(credential, bindings=(), **kwargs) -> Decision:
    """The whole decision as Check makes it: the bindings only for what every other rule allowed."""
    question = ask(credential, **kwargs)
    decision = PIPELINE.decide(credential, question)
    if PIPELINE.binding_slot(decision, question) is not None:
        question.bindings = tuple(bindings)
        decision = PIPELINE.bind(decision, question)
    return decision


@pytest.mark.parametrize(("credential", "kwargs", "code"), [
    (cred(), {}, Code.OK),
    (cred(expire_time=PAST), {}, Code.KEY_EXPIRED),
    (cred(secret_expire_time=FUTURE), {}, Code.OK),
    (cred(disabled=True), {}, Code.KEY_DISABLED),
    (cred(cidrs=("10.0.0.0/8",)), {"address": "10.0.0.1"}, Code.OK),
    (cred(cidrs=("10.0.0.0/8",)), {"address": "11.0.0.1"}, Code.IP_NOT_ALLOWED),
    (cred(), {"workspace": "ws2"}, Code.WORKSPACE_MISMATCH),
    (cred(scope=["chatflows/xyz"]), {}, Code.RESOURCE_OUT_OF_SCOPE),
    (cred(), {"action": "chatflows:delete"}, Code.PERMISSION_DENIED),
    (cred(), {"bindings": [bind()]}, Code.RESOURCE_BOUND_TO_OTHER_KEY),
    (cred(), {"bindings": [bind(ME)]}, Code.OK),
    (cred(permissions=["chatflows:view"]), {"bindings": [bind(ME)]}, Code.PERMISSION_DENIED),
    (cred(permissions=["*"], workspace=""), {"resource": "apikeys/x", "action": "apikeys:delete", "workspace": "any"},
     Code.OK),
])
def test_codes(credential, kwargs, code):
    decision = run(credential, **kwargs)
    assert decision.code is code
    assert decision.allowed is (code is Code.OK)
    assert decision.credential is credential and decision.reason


@pytest.mark.parametrize(("failures", "code"), [
    ({"expire_time": PAST, "disabled": True}, Code.KEY_EXPIRED),
    ({"secret_expire_time": PAST, "disabled": True}, Code.KEY_EXPIRED),
    ({"disabled": True}, Code.KEY_DISABLED),
    ({}, Code.IP_NOT_ALLOWED),
])
def test_order_key_rules_first(failures, code):
    # Every later rule also fails: wrong address, workspace, out of scope, no permission, bound elsewhere.
    bad = replace(cred(permissions=["tools:view"], scope=["tools/*"], cidrs=("10.0.0.0/8",)), **failures)
    assert run(bad, workspace="ws2", address="11.0.0.1", bindings=[bind()]).code is code


@pytest.mark.parametrize(("credential", "code"), [
    (cred(permissions=["tools:view"], scope=["tools/*"]), Code.WORKSPACE_MISMATCH),
])
def test_workspace_before_scope(credential, code):
    assert run(credential, workspace="ws2", bindings=[bind()]).code is code


@pytest.mark.parametrize(("credential", "code"), [
    (cred(permissions=["tools:view"], scope=["tools/*"]), Code.RESOURCE_OUT_OF_SCOPE),
    (cred(permissions=["tools:view"]), Code.PERMISSION_DENIED),
    (cred(), Code.RESOURCE_BOUND_TO_OTHER_KEY),
])
def test_order_scope_permission_binding(credential, code):
    assert run(credential, bindings=[bind()]).code is code


def test_key_verdict_is_the_key_rules_only():
    assert key_verdict(cred(permissions=["tools:view"], scope=["tools/*"]), "", NOW) is None
    assert key_verdict(cred(expire_time=PAST), "", NOW).code is Code.KEY_EXPIRED
    assert key_verdict(cred(disabled=True), "", NOW).code is Code.KEY_DISABLED
    listed = cred(cidrs=("10.0.0.0/8",))
    assert key_verdict(listed, "10.9.9.9", NOW) is None
    assert key_verdict(listed, "", NOW).code is Code.IP_NOT_ALLOWED


def test_a_retired_secret_ends_with_its_grace_or_the_key_whichever_is_first():
    assert cred().ends is None and not cred().retired
    assert cred(expire_time=FUTURE, secret_expire_time=FUTURE.replace(year=2030)).ends == FUTURE
    assert cred(secret_expire_time=FUTURE).retired and cred(secret_expire_time=FUTURE).ends == FUTURE


# --- declarations ---------------------------------------------------------------------------------

class _Recording:
    """Stands in for a CheckItem or Credential, recording which attributes a rule reads."""

    def __init__(self, real: object) -> None:
        self.real, self.read = real, set()

    def __getattr__(self, name: str) -> object:
        self.read.add(name)
        return getattr(self.real, name)


@pytest.mark.parametrize("rule", [*RULES, BINDING], ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("credential", [cred(), cred(cidrs=("10.0.0.0/8",), expire_time=FUTURE,
                                                   secret_expire_time=FUTURE, scope=["chatflows/*"])])
def test_each_rule_reads_only_what_it_declares(rule, credential):
    """An input read but not declared would be missing from the remembered-decision key."""
    key = _Recording(credential)
    question = ask(credential, address="10.0.0.1", bindings=[bind()])
    item = _Recording(question.item)
    question.item = item  # type: ignore[assignment]
    rule.evaluate(key, question)  # type: ignore[arg-type]
    # The Target is made of resource and action; a rule reading it reads both.
    assert item.read <= rule.facts
    assert key.read <= rule.key_data


def test_the_checkitem_is_exactly_the_declared_facts():
    assert frozenset().union(*(r.facts for r in (*RULES, BINDING))) == FACTS


class _NewInput:
    facts = frozenset({"user_agent"})  # no such CheckItem field: recall would ignore it
    key_data = frozenset[str]()

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        return None


class _NewKeyData:
    facts = frozenset[str]()
    key_data = frozenset({"quota"})

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        return None


def test_a_rule_with_an_undeclared_input_or_key_datum_cannot_start():
    with pytest.raises(ValueError, match="facts"):
        Pipeline((*RULES, _NewInput()))
    with pytest.raises(ValueError, match="key data"):
        Pipeline((*RULES, _NewKeyData()))
    with pytest.raises(ValueError, match="facts"):  # an input nobody reads splits the memo for nothing
        Pipeline(tuple(r for r in RULES if "client_address" not in r.facts))


# --- the remembered-decision key ------------------------------------------------------------------

_text = st.text(max_size=12)
_items = st.builds(CheckItem, _text, _text, _text, _text)
_digests = st.binary(min_size=0, max_size=4)
GATED = {"client_address"}  # read only by the IP allow-list, for keys with networks


def keys_of(digest, item, credential):
    """Every memo key a request may be answered from, for a decision made for `credential`."""
    keys = [PIPELINE.base_key(digest, item)]
    if PIPELINE.keyed(credential):
        keys.append(PIPELINE.full_key(digest, item))
    return keys


@given(_digests, _items, _digests, _items)
def test_two_different_requests_never_share_a_full_key(d1, i1, d2, i2):
    same_request = d1 == d2 and all(getattr(i1, f) == getattr(i2, f) for f in FACTS)
    k1, k2 = PIPELINE.full_key(d1, i1), PIPELINE.full_key(d2, i2)
    assert (k1 == k2) is same_request
    if same_request:
        assert hash(k1) == hash(k2)


@given(_digests, _items, _digests, _items)
def test_the_base_key_differs_exactly_when_an_unconditional_input_does(d1, i1, d2, i2):
    same = d1 == d2 and all(getattr(i1, f) == getattr(i2, f) for f in FACTS - GATED)
    assert (PIPELINE.base_key(d1, i1) == PIPELINE.base_key(d2, i2)) is same


@given(_digests, _items, st.sampled_from(sorted(FACTS)), _text)
def test_every_declared_input_changes_the_key_of_a_key_it_can_matter_to(digest, item, fact, other):
    changed = item._replace(**{fact: other})
    unchanged = getattr(item, fact) == other
    listed = cred(cidrs=("10.0.0.0/8",))
    assert (keys_of(digest, item, listed)[-1] == keys_of(digest, changed, listed)[-1]) is unchanged
    if fact not in GATED:
        assert (keys_of(digest, item, cred())[-1] == keys_of(digest, changed, cred())[-1]) is unchanged


def test_only_keys_with_networks_are_keyed_by_the_address():
    assert not PIPELINE.keyed(None) and not PIPELINE.keyed(cred())
    assert PIPELINE.keyed(cred(cidrs=("10.0.0.0/8",)))
    a, b = CheckItem("r", "a", "w", "10.0.0.1"), CheckItem("r", "a", "w", "11.0.0.1")
    assert PIPELINE.base_key(b"k", a) == PIPELINE.base_key(b"k", b)
    assert PIPELINE.full_key(b"k", a) != PIPELINE.full_key(b"k", b)


class _GatedButFirst:
    facts = frozenset({"resource"})
    key_data = frozenset({"networks"})
    keyed_when = "networks"

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        return None


def test_an_input_read_only_when_keyed_must_come_last_in_the_item():
    Pipeline((*RULES, _GatedButFirst()))  # resource is also read unconditionally: fine
    with pytest.raises(ValueError, match="end with"):  # resource read only when keyed: it is not last
        Pipeline((_GatedButFirst(), *(r for r in RULES if "resource" not in r.facts)), binding=_BindingByAction())


class _BindingByAction(BindingRule):
    facts = frozenset({"action", "workspace_id"})


@given(_text, _text)
def test_no_joining_ambiguity(a, b):
    """("a:b", "x") and ("a", "b:x") are different questions: fields are never joined into one string."""
    assert PIPELINE.full_key(b"k", CheckItem(a + ":" + b, "x")) != PIPELINE.full_key(b"k", CheckItem(a, b + ":x"))
    assert PIPELINE.base_key(b"k", CheckItem(a + ":" + b, "x")) != PIPELINE.base_key(b"k", CheckItem(a, b + ":x"))
