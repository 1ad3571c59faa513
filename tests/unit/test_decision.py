"""decide(): every code, the documented order, and the HTTP mapping."""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keygate.domain.decision import Binding, Code, Credential, bound_elsewhere, decide, key_state
from keygate.domain.permissions import Catalog
from keygate.domain.resources import Scope, target

CATALOG = Catalog.build()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(seconds=1)
FUTURE = NOW + timedelta(days=1)
ME = uuid.uuid4()
OTHER = uuid.uuid4()
RES = "chatflows/abc"
USE = "predictions:create"


def cred(permissions=("chatflows:update", USE), scope=(), workspace="ws1", **kw) -> Credential:
    return Credential(key_id=ME, key_name="k", workspace_id=workspace, grants=CATALOG.expand(permissions),
                      scope=Scope.compile(scope), expire_time=kw.pop("expire_time", None),
                      disabled=kw.pop("disabled", False), **kw)


def bind(key_id=OTHER, actions=(USE,)) -> Binding:
    return Binding(resource=RES, key_id=key_id, actions=actions, workspace_id="ws1")


def run(credential, resource=RES, action=USE, workspace="ws1", bindings=()):
    """The whole decision as Check makes it: the bindings only for what every other rule allowed."""
    wanted = target(CATALOG, resource, action)
    decision = decide(credential, wanted, workspace, NOW)
    return bound_elsewhere(decision, wanted, list(bindings)) if decision.allowed else decision


@pytest.mark.parametrize(
    ("credential", "kwargs", "code"),
    [
        (cred(), {}, Code.OK),
        (cred(), {"action": "chatflows:view"}, Code.OK),  # implied by update
        (cred(), {"resource": "", "action": "chatflows:update"}, Code.OK),
        (cred(expire_time=FUTURE), {}, Code.OK),
        (cred(secret_expire_time=FUTURE), {}, Code.OK),  # rotated, still in grace
        (cred(expire_time=PAST), {}, Code.KEY_EXPIRED),
        (cred(expire_time=NOW), {}, Code.KEY_EXPIRED),
        (cred(secret_expire_time=PAST), {}, Code.KEY_EXPIRED),
        (cred(disabled=True), {}, Code.KEY_DISABLED),
        (cred(), {"workspace": "ws2"}, Code.WORKSPACE_MISMATCH),
        (cred(), {"workspace": ""}, Code.OK),  # no workspace asked: the key's own
        (cred(workspace=""), {"workspace": "ws2"}, Code.OK),  # root spans workspaces
        (cred(scope=["chatflows/xyz"]), {}, Code.RESOURCE_OUT_OF_SCOPE),
        (cred(scope=["chatflows/abc"]), {}, Code.OK),
        (cred(scope=["chatflows/*"]), {}, Code.OK),
        (cred(scope=["chatflows/abc"]), {"resource": "", "action": "chatflows:update"}, Code.RESOURCE_OUT_OF_SCOPE),
        (cred(), {"action": "chatflows:delete"}, Code.PERMISSION_DENIED),
        (cred(permissions=["chatflows:view"]), {}, Code.PERMISSION_DENIED),
        (cred(permissions=["chatflows:*"]), {"action": "chatflows:delete"}, Code.OK),
        (cred(permissions=["*"], workspace=""),
         {"resource": "apikeys/x", "action": "apikeys:delete", "workspace": "any"}, Code.OK),
        (cred(), {"bindings": [bind()]}, Code.RESOURCE_BOUND_TO_OTHER_KEY),
        (cred(), {"bindings": [bind(), bind(ME)]}, Code.OK),  # one of several bound keys
        (cred(), {"bindings": [bind(ME)]}, Code.OK),
        # Bound key still needs the permission itself.
        (cred(permissions=["chatflows:view"]), {"bindings": [bind(ME)]}, Code.PERMISSION_DENIED),
        # A binding governs use, not management.
        (cred(), {"action": "chatflows:update", "bindings": [bind()]}, Code.OK),
        (cred(), {"bindings": [bind(actions=("chatflows:update",))]}, Code.OK),
        (cred(), {"action": "chatflows:update", "bindings": [bind(actions=("chatflows:update",))]},
         Code.RESOURCE_BOUND_TO_OTHER_KEY),
    ],
)
def test_decide_codes(credential, kwargs, code):
    decision = run(credential, **kwargs)
    assert decision.code is code
    assert decision.allowed is (code is Code.OK)
    assert decision.credential is credential
    assert decision.reason


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        ({"expire_time": PAST, "disabled": True}, Code.KEY_EXPIRED),
        ({"secret_expire_time": PAST, "disabled": True}, Code.KEY_EXPIRED),
        ({"disabled": True}, Code.KEY_DISABLED),
        ({}, Code.WORKSPACE_MISMATCH),
    ],
)
def test_order_key_state_then_workspace(failures, code):
    # Every later check also fails: wrong workspace, out of scope, no permission, bound elsewhere.
    bad = replace(cred(permissions=["tools:view"], scope=["tools/*"]), **failures)
    assert run(bad, workspace="ws2", bindings=[bind()]).code is code


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        (cred(permissions=["tools:view"], scope=["tools/*"]), Code.RESOURCE_OUT_OF_SCOPE),
        (cred(permissions=["tools:view"]), Code.PERMISSION_DENIED),
        (cred(), Code.RESOURCE_BOUND_TO_OTHER_KEY),
    ],
)
def test_order_scope_permission_binding(credential, code):
    assert run(credential, bindings=[bind()]).code is code


def test_key_state():
    assert key_state(cred(), NOW) is None
    assert key_state(cred(expire_time=PAST), NOW).code is Code.KEY_EXPIRED
    rotated = key_state(cred(secret_expire_time=PAST), NOW)
    assert rotated.code is Code.KEY_EXPIRED and "rotated" in rotated.reason
    assert key_state(cred(disabled=True), NOW).code is Code.KEY_DISABLED


def test_a_retired_secret_ends_with_its_grace_or_the_key_whichever_is_first():
    assert cred().ends is None and not cred().retired
    assert cred(expire_time=FUTURE).ends == FUTURE
    assert cred(secret_expire_time=FUTURE).retired
    assert cred(secret_expire_time=FUTURE).ends == FUTURE
    assert cred(expire_time=FUTURE, secret_expire_time=FUTURE + timedelta(1)).ends == FUTURE
    assert cred(expire_time=FUTURE + timedelta(1), secret_expire_time=FUTURE).ends == FUTURE


def test_root_property():
    assert cred(workspace="").root
    assert not cred().root


HTTP_STATUS = {
    Code.OK: 200,
    Code.KEY_MISSING: 401,
    Code.KEY_MALFORMED: 401,
    Code.KEY_NOT_FOUND: 401,
    Code.KEY_EXPIRED: 401,
    Code.KEY_DISABLED: 401,
    Code.RESOURCE_BOUND_TO_OTHER_KEY: 401,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_OUT_OF_SCOPE: 403,
    Code.WORKSPACE_MISMATCH: 403,
}


@pytest.mark.parametrize("code", list(Code))
def test_http_status(code):
    assert code.http_status == HTTP_STATUS[code]
    assert code.name == code.value
