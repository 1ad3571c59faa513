"""Scope: a key limited to resources touches nothing else, nor a whole collection."""

import pytest

from keygate.domain.decision import Code
from keygate.domain.evaluators.scope import SCOPE

from .helpers import ask, cred


@pytest.mark.parametrize(("scope", "resource", "action", "allowed"), [
    ((), "chatflows/abc", "predictions:create", True),
    (("chatflows/abc",), "chatflows/abc", "predictions:create", True),
    (("chatflows/*",), "chatflows/abc", "predictions:create", True),
    (("chatflows/xyz",), "chatflows/abc", "predictions:create", False),
    (("chatflows/abc",), "", "chatflows:update", False),
])
def test_scope(scope, resource, action, allowed):
    credential = cred(scope=scope)
    refused = SCOPE.evaluate(credential, ask(credential, resource, action))
    assert (refused is None) is allowed
    assert allowed or refused.code is Code.RESOURCE_OUT_OF_SCOPE
