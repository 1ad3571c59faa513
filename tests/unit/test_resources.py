"""The resource model: canonical names, scope patterns, which collections an action acts on, Scope.

The spelling classes are property-based: every spelling PostgreSQL reads as one uuid, and every
case of a collection's name, must come out as one canonical name.
"""

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.domain.errors import InvalidArgument
from keygate.domain.permissions import Catalog
from keygate.domain.resources import Scope, canonical_pattern, canonical_resource, target

CATALOG = Catalog.build()
ID = "3f2a6c1e-0b1d-4e2f-9a3b-1c2d3e4f5a6b"

GOOD_RESOURCES = {
    "": "",
    "chatflows/abc": "chatflows/abc",
    "documentStores/x/loaders/y": "documentStores/x/loaders/y",
    f"chatflows/{ID}": f"chatflows/{ID}",
    "chatflows/b.c_d~e-f": "chatflows/b.c_d~e-f",
    "chatflows/" + "x." * 123: "chatflows/" + "x." * 123,
    "CHATFLOWS/abc": "chatflows/abc",
    "documentstores/x": "documentStores/x",
    f"chatflows/{ID.upper()}": f"chatflows/{ID}",
    f"chatflows/{ID.replace('-', '')}": f"chatflows/{ID}",
    f"Chatflows/{ID}/messages/{ID.upper()}": f"chatflows/{ID}/messages/{ID}",
    "chatflows/ABC": "chatflows/ABC",  # not a uuid: kept as given
}
BAD_RESOURCES = ["/x", "x/", "a//b", "*", "chatflows", "Chatflows", "chatflows/*", "chatflows/*/x", "chat flows/x",
                 "chatflows/a b", "chatflows/.hidden", "chatflows/..", "chatflows/a?b", "chatflows/é",
                 "chatflows/" + "x" * 247, "unknowncoll/x", "predictions/x", "chatflows/abc\n", "chatflows/a\x00"]


@pytest.mark.parametrize(("given_", "canonical"), GOOD_RESOURCES.items())
def test_canonical_resource(given_, canonical):
    assert canonical_resource(CATALOG, given_) == canonical


@pytest.mark.parametrize("resource", BAD_RESOURCES)
def test_canonical_resource_rejects(resource):
    with pytest.raises(InvalidArgument) as err:
        canonical_resource(CATALOG, resource, "items[0].resource")
    assert err.value.field == "items[0].resource"


@pytest.mark.parametrize(("pattern", "canonical"), [
    ("chatflows/abc", "chatflows/abc"), ("chatflows/*", "chatflows/*"), ("chatflows", "chatflows/*"),
    ("CHATFLOWS", "chatflows/*"), ("ChatFlows/*", "chatflows/*"),
    ("documentStores/x/loaders/y", "documentStores/x/loaders/y"),
    ("documentStores/x/*", "documentStores/x"), (f"chatflows/{ID.upper()}/*", f"chatflows/{ID}"),
])
def test_canonical_pattern(pattern, canonical):
    assert canonical_pattern(CATALOG, pattern, "resources[0]") == canonical


@pytest.mark.parametrize("pattern", ["", "*", "/*", "/x", "a//b", "chatflows/*/x", "chatflows/**", "chatflows/a*",
                                     "chat flows/*", "nosuch/*", "nosuch", "chatflows/" + "x" * 247])
def test_canonical_pattern_rejects(pattern):
    with pytest.raises(InvalidArgument) as err:
        canonical_pattern(CATALOG, pattern, "resources[1]")
    assert err.value.field == "resources[1]"


@pytest.mark.parametrize(("resource", "action", "field"), [
    ("unknowncoll/x", "chatflows:view", "resource"),
    ("agentflows/x", "chatflows:view", "resource"),
    ("tools/x", "predictions:create", "resource"),
    ("chatflows/x", "chatflows:fly", "action"),
    ("chatflows", "chatflows:view", "resource"),
])
def test_target_refuses_an_action_on_a_collection_it_does_not_act_on(resource, action, field):
    with pytest.raises(InvalidArgument) as err:
        target(CATALOG, resource, action, "items[3].")
    assert err.value.field == f"items[3].{field}"


def test_target_is_canonical_and_knows_the_actions_collections():
    assert target(CATALOG, "AgentFlows/X", "predictions:create").resource == "agentflows/X"
    assert target(CATALOG, "", "predictions:create").collections == ("chatflows", "agentflows")
    assert target(CATALOG, "", "chatflows:create").collections == ("chatflows",)


def test_operator_categories_declare_their_collections():
    catalog = Catalog.build({"billing": ["view", "charge"],
                             "invoices": {"verbs": ["send"], "collections": ["billing"]}})
    assert target(catalog, "Billing/acct-1", "invoices:send").resource == "billing/acct-1"
    with pytest.raises(InvalidArgument):
        target(catalog, "invoices/x", "invoices:send")  # invoices act on billing, so they are no collection
    with pytest.raises(InvalidArgument) as err:
        Catalog.build({"Chatflows": ["view"]})  # a second spelling of a collection
    assert err.value.field == "catalog"


# --- property-based: the spellings a platform resolves to one record ---------------------------


@st.composite
def postgres_spellings(draw: st.DrawFn) -> tuple[uuid.UUID, str]:
    """A uuid and a spelling PostgreSQL's uuid input reads as it: hex digits in any case, and a hyphen
    after any group of four of them, or none (the canonical 8-4-4-4-12 is one of these)."""
    value = uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))
    digits = value.hex
    out = []
    for i, digit in enumerate(digits):
        out.append(digit.upper() if draw(st.booleans()) else digit)
        if i % 4 == 3 and i < 31 and draw(st.booleans()):
            out.append("-")
    return value, "".join(out)


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from(sorted({c.lower(), c.upper()})) for c in word]).map("".join)


@settings(max_examples=300, deadline=None)
@given(postgres_spellings(), st.sampled_from(sorted(CATALOG.acts_on["chatflows"] + CATALOG.acts_on["tools"]
                                                      + CATALOG.acts_on["documentStores"])).flatmap(
    lambda c: st.tuples(st.just(c), any_case(c))))
def test_every_spelling_of_one_record_is_one_resource(spelled, collection):
    value, spelling = spelled
    name, any_cased = collection
    assert canonical_resource(CATALOG, f"{any_cased}/{spelling}") == f"{name}/{value}"
    assert canonical_pattern(CATALOG, f"{any_cased}/{spelling}", "resources[0]") == f"{name}/{value}"


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[A-Za-z][A-Za-z]{0,20}(/[A-Za-z0-9][A-Za-z0-9._~-]{0,40}){1,3}\Z"))
def test_canonical_is_idempotent_and_total(resource):
    """A well-formed name is refused (unknown collection) or has a canonical form, which is its own."""
    try:
        canonical = canonical_resource(CATALOG, resource)
    except InvalidArgument as err:
        assert err.field == "resource"
        return
    assert canonical_resource(CATALOG, canonical) == canonical
    assert canonical.lower().replace("-", "") == resource.lower().replace("-", "")  # only case and hyphens move


@settings(max_examples=200, deadline=None)
@given(postgres_spellings(), postgres_spellings())
def test_different_records_never_share_a_name(a, b):
    assert (canonical_resource(CATALOG, f"chatflows/{a[1]}") == canonical_resource(CATALOG, f"chatflows/{b[1]}")) \
        == (a[0] == b[0])


# --- Scope ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "resource", "action", "allowed"),
    [
        ([], "chatflows/at/all", "chatflows:view", True),
        ([], "", "chatflows:create", True),
        (["chatflows/abc"], "chatflows/abc", "chatflows:view", True),
        (["chatflows/abc"], "chatflows/abc/messages/1", "chatflows:view", True),
        (["chatflows/abc"], "chatflows/abcd", "chatflows:view", False),
        (["chatflows/abc"], "chatflows/ab", "chatflows:view", False),
        (["chatflows/abc"], "agentflows/abc", "agentflows:view", False),
        (["chatflows/abc"], "chatflows/abc", "predictions:create", True),
        (["chatflows/*"], "chatflows/anything", "chatflows:view", True),
        (["chatflows/*"], "chatflows/x/y", "chatflows:view", True),
        (["chatflows"], "chatflows/anything", "chatflows:view", True),
        (["chatflows/abc", "tools/*"], "tools/t1", "tools:view", True),
        (["chatflows/abc", "tools/*"], "chatflows/zzz", "chatflows:view", False),
        # Empty resource: every collection the action acts on, in full.
        (["chatflows/*"], "", "chatflows:create", True),
        (["chatflows/*"], "", "agentflows:create", False),
        (["chatflows/abc"], "", "chatflows:create", False),
        (["chatflows/*"], "", "predictions:create", False),
        (["chatflows/*", "agentflows/*"], "", "predictions:create", True),
    ],
)
def test_scope_allows(patterns, resource, action, allowed):
    assert Scope.compile(patterns).allows(target(CATALOG, resource, action)) is allowed


def test_compile_normalises():
    assert Scope.compile([]).unrestricted
    assert not Scope.compile(["chatflows/a"]).unrestricted
    assert Scope.compile(["chatflows/*", "chatflows", "tools/b"]) == Scope.compile(["tools/b", "chatflows"])


@pytest.mark.parametrize(
    ("mine", "theirs", "covers"),
    [
        ([], [], True),
        ([], ["chatflows/x"], True),
        (["chatflows/*"], [], False),
        (["chatflows/x"], [], False),
        (["chatflows/*"], ["chatflows/x"], True),
        (["chatflows/*"], ["chatflows/*"], True),
        (["chatflows/x"], ["chatflows/*"], False),
        (["chatflows/x"], ["chatflows/x"], True),
        (["chatflows/x"], ["chatflows/x/y"], True),
        (["chatflows/x"], ["chatflows/xy"], False),
        (["chatflows/x"], ["chatflows/x", "tools/t"], False),
        (["chatflows/*", "tools/*"], ["chatflows/x", "tools/t"], True),
    ],
)
def test_scope_covers(mine, theirs, covers):
    assert Scope.compile(mine).covers(Scope.compile(theirs)) is covers


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["fl", "sk", "kg"]), st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_",
                                                      min_size=43, max_size=60))
def test_a_name_holding_a_key_is_refused_without_quoting_it(prefix, secret):
    """A caller who pastes a key where a resource goes must not get it stored, audited or echoed: one of
    ours (base62) or an imported Flowise key (base64url)."""
    for name in (f"chatflows/{prefix}_{secret}", f"{prefix}_{secret}/x", f"chatflows/a/{secret}"):
        for canonical in (lambda n: canonical_resource(CATALOG, n), lambda n: canonical_pattern(CATALOG, n, "r")):
            with pytest.raises(InvalidArgument) as err:
                canonical(name)
            assert secret not in err.value.message and secret not in err.value.description
