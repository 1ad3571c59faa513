"""Permission: the key must hold the action (its grants are its permissions with what they imply)."""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class Permission:
    facts = frozenset({"action"})
    key_data = frozenset({"grants"})
    keyed_when = ""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        action = question.target.action
        if action in credential.grants:
            return None
        return Decision(Code.PERMISSION_DENIED, f"the key lacks {action!r}", credential)


PERMISSION = Permission()
