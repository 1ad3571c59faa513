"""KeySpec validation and the no-escalation rule."""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.domain.decision import Credential
from keygate.domain.errors import InvalidArgument, PermissionDenied
from keygate.domain.permissions import Catalog
from keygate.domain.policy import (
    KeySpec,
    ensure_not_retired,
    ensure_within,
    parse_id,
    rights_of,
    validate_grace_period,
)
from keygate.domain.resources import Scope

CATALOG = Catalog.build()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SOON = NOW + timedelta(days=1)
LATER = NOW + timedelta(days=30)


def spec(**kw) -> KeySpec:
    base = {"name": "ci key", "workspace_id": "ws1", "permissions": ("chatflows:view",)}
    return KeySpec(**(base | kw))


def cred(permissions=("chatflows:*", "apikeys:*"), scope=(), workspace="ws1", expire_time=None) -> Credential:
    return Credential(key_id=uuid.uuid4(), key_name="caller", workspace_id=workspace,
                      grants=CATALOG.expand(permissions), scope=Scope.compile(scope),
                      expire_time=expire_time, disabled=False)


# --- validation ----------------------------------------------------------------------


def test_validated_normalises():
    out = spec(name="  ci key  ", permissions=("chatflows:view", "chatflows:*", "chatflows:view"),
               resources=("chatflows/a", "chatflows/a", "tools/*"), metadata={"team": "ml"},
               expire_time=SOON, description="multi\nline\tdesc").validated(CATALOG, NOW)
    assert out.name == "ci key"
    assert out.permissions == ("chatflows:view", "chatflows:*")
    assert out.resources == ("chatflows/a", "tools/*")
    assert out.metadata == {"team": "ml"}
    assert out.scope == Scope.compile(["chatflows/a", "tools/*"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "bad\x00name"}, "name"),
        ({"name": "bad\x1b[31mname"}, "name"),
        ({"workspace_id": ""}, "workspace_id"),
        ({"workspace_id": "-ws"}, "workspace_id"),
        ({"workspace_id": "w s"}, "workspace_id"),
        ({"workspace_id": "w/s"}, "workspace_id"),
        ({"workspace_id": "w" * 129}, "workspace_id"),
        ({"permissions": ()}, "permissions"),
        ({"permissions": ("chatflows:view",) * 201}, "permissions"),
        ({"permissions": ("chatflows:view", "chatflows:fly")}, "permissions[1]"),
        ({"permissions": ("rockets:*",)}, "permissions[0]"),
        ({"permissions": ("chatflows:view", "*")}, "permissions[1]"),
        ({"resources": ("chatflows/a", "chatflows/*/x")}, "resources[1]"),
        ({"resources": ("",)}, "resources[0]"),
        ({"resources": tuple(f"chatflows/{i}" for i in range(101))}, "resources"),
        ({"description": "d" * 1001}, "description"),
        ({"description": "bell\x07"}, "description"),
        ({"metadata": {f"k{i}": "v" for i in range(33)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata['[redacted]']"),  # key-shaped text is never quoted
        ({"metadata": {"bad key": "v"}}, "metadata['bad key']"),
        ({"metadata": {"": "v"}}, "metadata['']"),
        ({"metadata": {"team": "v" * 513}}, "metadata['team']"),
        ({"metadata": {"team": "a\x00b"}}, "metadata['team']"),
        ({"expire_time": NOW}, "expire_time"),
        ({"expire_time": NOW - timedelta(days=1)}, "expire_time"),
    ],
)
def test_validated_names_bad_field(fields, field):
    with pytest.raises(InvalidArgument) as err:
        spec(**fields).validated(CATALOG, NOW)
    assert err.value.field == field
    assert err.value.message.startswith(f"{field}: ")


def test_unknown_permission_is_named():
    with pytest.raises(InvalidArgument, match="chatflows:fly"):
        spec(permissions=("chatflows:fly",)).validated(CATALOG, NOW)


def test_past_expiry_kept_when_not_checked():
    past = NOW - timedelta(days=1)
    assert spec(expire_time=past).validated(CATALOG, NOW, check_expiry=False).expire_time == past


@pytest.mark.parametrize(
    "fields",
    [{"name": "x" * 100}, {"workspace_id": "w" * 128}, {"workspace_id": "org:team.1_x-y"},
     {"metadata": {f"k{i}": "v" * 512 for i in range(32)}}, {"metadata": {"a.b/c-d": ""}},
     {"permissions": ("chatflows:view",) * 200}, {"description": "d" * 1000}],
)
def test_validated_limits_inclusive(fields):
    spec(**fields).validated(CATALOG, NOW)


@pytest.mark.parametrize("fields", [{"workspace_id": "ws1\n"}, {"metadata": {"team\n": "v"}}])
def test_trailing_newline_rejected(fields):
    with pytest.raises(InvalidArgument):
        spec(**fields).validated(CATALOG, NOW)


@pytest.mark.parametrize("name", ["bad\x7fname", "bad\x9b31mname"])
def test_name_rejects_del_and_c1_controls(name):
    with pytest.raises(InvalidArgument):
        spec(name=name).validated(CATALOG, NOW)


# --- no escalation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "fields"),
    [
        (cred(), {}),
        (cred(), {"permissions": ("chatflows:*",)}),
        (cred(["chatflows:update"]), {"permissions": ("chatflows:view", "chatflows:update")}),
        (cred(["*"], workspace=""), {"workspace_id": "any-ws", "permissions": ("users:*",)}),
        (cred(scope=["chatflows/*"]), {"resources": ("chatflows/a", "chatflows/b/c")}),
        (cred(scope=["chatflows/a"]), {"resources": ("chatflows/a",)}),
        (cred(expire_time=LATER), {"expire_time": LATER}),
        (cred(expire_time=LATER), {"expire_time": SOON}),
        (cred(), {"expire_time": SOON}),
    ],
)
def test_ensure_within_allows_equal_or_narrower(caller, fields):
    ensure_within(caller, spec(**fields))


@pytest.mark.parametrize(
    ("caller", "fields"),
    [
        (cred(), {"workspace_id": "ws2"}),
        (cred(["chatflows:view"]), {"permissions": ("chatflows:update",)}),
        (cred(["chatflows:update"]), {"permissions": ("chatflows:*",)}),
        (cred(), {"permissions": ("tools:view",)}),
        (cred(), {"permissions": ("*",)}),
        (cred(scope=["chatflows/a"]), {}),  # unrestricted is wider than any scope
        (cred(scope=["chatflows/a"]), {"resources": ("chatflows/*",)}),
        (cred(scope=["chatflows/a"]), {"resources": ("chatflows/b",)}),
        (cred(scope=["chatflows/a"]), {"resources": ("chatflows/a", "tools/*")}),
        (cred(expire_time=SOON), {}),  # never expires, caller does
        (cred(expire_time=SOON), {"expire_time": LATER}),
    ],
)
def test_ensure_within_refuses_wider(caller, fields):
    with pytest.raises(PermissionDenied):
        ensure_within(caller, spec(**fields))


TARGET = cred(["tools:*"], scope=["tools/t1"], expire_time=LATER)


@pytest.mark.parametrize(
    "fields",
    [
        {"permissions": ("tools:update", "chatflows:view"), "resources": ("tools/t1",), "expire_time": SOON},
        {"permissions": ("tools:view",), "resources": ("tools/t1",), "expire_time": SOON},
        {"permissions": ("tools:*",), "resources": ("tools/t1",), "expire_time": LATER},
    ],
)
def test_baseline_keeps_what_key_had(fields):
    caller = cred(["chatflows:view", "apikeys:update"], scope=["tools/t1"], expire_time=SOON)
    with pytest.raises(PermissionDenied):
        ensure_within(caller, spec(**fields))  # without a baseline it would be escalation
    ensure_within(caller, spec(**fields), baseline=TARGET)


@pytest.mark.parametrize(
    "fields",
    [
        {"permissions": ("assistants:view",), "resources": ("tools/t1",), "expire_time": SOON},
        {"permissions": ("tools:view",), "resources": ("tools/t2",), "expire_time": SOON},
        {"permissions": ("tools:view",), "resources": ("tools/t1",), "expire_time": LATER + timedelta(days=1)},
        {"permissions": ("tools:view",), "resources": ("tools/t1",)},
        {"permissions": ("tools:view",), "resources": ("tools/t1",), "workspace_id": "ws2"},
        # chatflows:view comes from the caller only, who holds it until SOON, not LATER.
        {"permissions": ("tools:update", "chatflows:view"), "resources": ("tools/t1",), "expire_time": LATER},
    ],
)
def test_baseline_new_rights_must_be_within_caller(fields):
    caller = cred(["chatflows:view", "apikeys:update"], scope=["tools/t1"], expire_time=SOON)
    with pytest.raises(PermissionDenied):
        ensure_within(caller, spec(**fields), baseline=TARGET)


@pytest.mark.parametrize(
    ("target", "fields"),
    [
        # Key may delete chatflows/a only; caller may not delete at all. Result: delete on every chatflow.
        (cred(["chatflows:delete"], scope=["chatflows/a"]), {"permissions": ("chatflows:delete",)}),
        # Key may delete until SOON; caller never expires but may not delete. Result: delete forever.
        (cred(["chatflows:delete"], expire_time=SOON), {"permissions": ("chatflows:delete",)}),
    ],
)
def test_baseline_cannot_be_combined_with_caller_rights(target, fields):
    caller = cred(["chatflows:view", "apikeys:update"])
    with pytest.raises(PermissionDenied):
        ensure_within(caller, spec(**fields), baseline=target)


def test_baseline_scope_kept_plus_new_within_caller():
    caller = cred(["chatflows:*", "apikeys:update"], scope=["chatflows/a"])
    target = cred(["chatflows:view"], scope=["chatflows/b"])
    ensure_within(caller, spec(resources=("chatflows/a", "chatflows/b")), baseline=target)


# --- ids and grace periods -----------------------------------------------------------


def test_parse_id():
    value = uuid.uuid4()
    assert parse_id(str(value)) == value


@pytest.mark.parametrize("value", ["", "nope", "3f2a6c1e", str(uuid.uuid4())[:-1], str(uuid.uuid4()) + "0"])
@pytest.mark.parametrize("field", ["id", "key_id"])
def test_parse_id_rejects(value, field):
    with pytest.raises(InvalidArgument) as err:
        parse_id(value, field) if field != "id" else parse_id(value)
    assert err.value.field == field


@pytest.mark.parametrize("grace", [timedelta(0), timedelta(hours=1), timedelta(days=30)])
def test_grace_period_ok(grace):
    assert validate_grace_period(grace) == grace


@pytest.mark.parametrize("grace", [timedelta(seconds=-1), timedelta(days=30, microseconds=1)])
def test_grace_period_bounds(grace):
    with pytest.raises(InvalidArgument) as err:
        validate_grace_period(grace)
    assert err.value.field == "grace_period"


# --- retired secrets: a secret replaced by a rotation, still in its grace period -------------


def retired(expire_time=None, grace_ends=SOON, **kw) -> Credential:
    return replace(cred(expire_time=expire_time, **kw), secret_expire_time=grace_ends)


@pytest.mark.parametrize("fields", [{}, {"expire_time": LATER}, {"expire_time": SOON + timedelta(seconds=1)}])
def test_a_retired_secret_cannot_grant_beyond_its_own_end(fields):
    """Its end counts wherever the key's expiry counts: a key that never expires is not its to mint."""
    with pytest.raises(PermissionDenied):
        ensure_within(retired(), spec(**fields))


def test_a_retired_secret_may_grant_up_to_its_own_end():
    ensure_within(retired(), spec(expire_time=SOON))
    ensure_within(retired(expire_time=SOON - timedelta(hours=1), grace_ends=LATER),
                  spec(expire_time=SOON - timedelta(hours=1)))


def test_a_retired_secret_cannot_rotate_or_reenable():
    ensure_not_retired(cred(), "rotate keys")
    with pytest.raises(PermissionDenied) as err:
        ensure_not_retired(retired(), "rotate keys")
    assert "current secret" in err.value.message


@settings(max_examples=300, deadline=None)
@given(grace=st.integers(1, 10**7), key_life=st.none() | st.integers(1, 10**7),
       wanted=st.none() | st.integers(1, 10**8))
def test_a_retired_secret_grants_nothing_that_outlives_it(grace, key_life, wanted):
    """Whatever the key's own expiry and whatever is asked for: allowed exactly when the new key ends
    no later than both the calling key and the retired secret."""
    at = lambda seconds: None if seconds is None else NOW + timedelta(seconds=seconds)  # noqa: E731
    caller = retired(expire_time=at(key_life), grace_ends=at(grace))
    ends = min(grace, key_life if key_life is not None else grace)
    try:
        ensure_within(caller, spec(expire_time=at(wanted)))
        granted = True
    except PermissionDenied:
        granted = False
    assert granted is (wanted is not None and wanted <= ends)


# --- rights_of: the default of a create that names no permissions ---------------------------


@pytest.mark.parametrize(("held", "expected"), [
    (("chatflows:*", "tools:update"), ["chatflows:*", "tools:update", "tools:view"]),
    (("*",), sorted(f"{c}:*" for c in CATALOG.verbs)),
])
def test_rights_of_holds_what_the_caller_holds_and_passes_ensure_within(held, expected):
    caller = replace(cred(held, scope=("chatflows/a", "tools/*"), workspace="ws1"), expire_time=SOON)
    out = replace(rights_of(caller), name="copy").validated(CATALOG, NOW)
    assert list(out.permissions) == expected
    assert (out.resources, out.expire_time, out.workspace_id) == (("chatflows/a", "tools/*"), SOON, "ws1")
    assert CATALOG.expand(out.permissions) == caller.grants - {"*"}
    ensure_within(caller, out)


# --- allowed_cidrs -------------------------------------------------------------------


def limited(*cidrs: str) -> Credential:
    return replace(cred(), networks=spec(allowed_cidrs=cidrs).networks)


def test_cidrs_are_canonical_and_bounded():
    out = spec(allowed_cidrs=("10.0.0.0/8", " 2001:DB8::/32", "::ffff:192.168.0.0/112", "10.0.0.0/8",
                              "203.0.113.7")).validated(CATALOG, NOW)
    assert out.allowed_cidrs == ("10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16", "203.0.113.7/32")
    for bad, field in ((("10.0.0.1/8",), "allowed_cidrs[0]"), (("1.2.3.4", "x"), "allowed_cidrs[1]"),
                       (("10.0.0.0/33",), "allowed_cidrs[0]"), (("10.0.0.0/8",) * 101, "allowed_cidrs")):
        with pytest.raises(InvalidArgument) as raised:
            spec(allowed_cidrs=bad).validated(CATALOG, NOW)
        assert raised.value.field == field


@pytest.mark.parametrize(("caller", "cidrs", "baseline", "allowed"), [
    ((), (), None, True),  # an unlimited caller gives any reach
    ((), ("0.0.0.0/0",), None, True),
    (("10.0.0.0/8",), ("10.1.0.0/16",), None, True),
    (("10.0.0.0/8",), ("10.0.0.0/8",), None, True),
    (("10.0.0.0/8",), (), None, False),  # no list is every address: wider
    (("10.0.0.0/8",), ("10.0.0.0/7",), None, False),
    (("10.0.0.0/8",), ("10.1.0.0/16", "11.0.0.0/16"), None, False),
    (("10.0.0.0/8",), ("::ffff:10.0.0.0/104",), None, False),  # unnormalised spec: IPv6, not within an IPv4 list
    (("10.0.0.0/8",), ("192.168.0.0/24",), ("192.168.0.0/16",), True),  # keeping/narrowing what the key had
    (("10.0.0.0/8",), (), (), True),  # the key was already unlimited
])
def test_networks_are_never_widened(caller, cidrs, baseline, allowed):
    base = None if baseline is None else limited(*baseline)
    try:
        ensure_within(limited(*caller), spec(allowed_cidrs=cidrs), base)
    except PermissionDenied as denied:
        assert not allowed, denied
        assert "allowed_cidrs" in denied.message
    else:
        assert allowed


def test_a_default_spec_keeps_the_callers_networks():
    caller = limited("10.0.0.0/8", "2001:db8::/32")
    assert rights_of(caller).allowed_cidrs == ("10.0.0.0/8", "2001:db8::/32")
    ensure_within(caller, rights_of(caller))


# --- one key model -------------------------------------------------------------------


def test_every_key_field_is_named_alike_in_the_proto_the_mask_and_the_model():
    from keygate.domain.policy import KEY_FIELDS, UPDATABLE_FIELDS
    from keygate.v1 import keys_pb2

    api_key = set(keys_pb2.ApiKey.DESCRIPTOR.fields_by_name)
    create = set(keys_pb2.CreateKeyRequest.DESCRIPTOR.fields_by_name)
    names = {f.name for f in KEY_FIELDS}
    assert names <= api_key
    assert names - create == {"disabled"}  # a key is created enabled
    assert set(UPDATABLE_FIELDS) == names - {"workspace_id"}


def test_spec_fields_round_trip_through_the_proto():
    from keygate.api import convert
    from keygate.domain.records import KeyRecord

    original = spec(description="d", resources=("chatflows/a",), expire_time=SOON, metadata={"k": "v"},
                    disabled=True, allowed_cidrs=("10.0.0.0/8",))
    record = KeyRecord(id=uuid.uuid4(), spec=original, display="kg_...", create_time=NOW, update_time=NOW)
    assert KeySpec(**convert.spec_fields(convert.api_key(record))) == original
