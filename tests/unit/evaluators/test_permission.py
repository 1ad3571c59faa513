"""Permission: the action must be among the key's grants (its permissions and what they imply)."""

import pytest

from keygate.domain.decision import Code
from keygate.domain.evaluators.permission import PERMISSION

from .helpers import ask, cred


@pytest.mark.parametrize(("permissions", "action", "allowed"), [
    (("chatflows:update",), "chatflows:view", True),  # implied
    (("chatflows:*",), "chatflows:delete", True),
    (("chatflows:view",), "chatflows:delete", False),
    (("chatflows:view",), "predictions:create", False),
])
def test_permission(permissions, action, allowed):
    credential = cred(permissions=permissions)
    refused = PERMISSION.evaluate(credential, ask(credential, action=action))
    assert (refused is None) is allowed
    assert allowed or (refused.code is Code.PERMISSION_DENIED and action in refused.reason)
