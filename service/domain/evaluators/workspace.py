"""Workspace: a workspace key acts only in its own workspace; a root key ("" workspace) in any."""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class Workspace:
    facts = frozenset({"workspace_id"})
    key_data = frozenset({"workspace_id"})
    keyed_when = ""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        if credential.workspace_id and question.workspace_id != credential.workspace_id:
            return Decision(Code.WORKSPACE_MISMATCH, "the key belongs to another workspace", credential)
        return None


WORKSPACE = Workspace()
