"""Workspace: a workspace key in its own workspace only; root keys anywhere."""

from keygate.domain.decision import Code
from keygate.domain.evaluators.workspace import WORKSPACE

from .helpers import ask, cred


def test_own_workspace_or_none_asked_passes():
    assert WORKSPACE.evaluate(cred(), ask(cred(), workspace="ws1")) is None
    assert WORKSPACE.evaluate(cred(), ask(cred(), workspace="")) is None  # no workspace asked: the key's own


def test_other_workspace_is_refused_unless_root():
    assert WORKSPACE.evaluate(cred(), ask(cred(), workspace="ws2")).code is Code.WORKSPACE_MISMATCH
    root = cred(workspace="")
    assert WORKSPACE.evaluate(root, ask(root, workspace="ws2")) is None
