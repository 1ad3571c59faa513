"""Scope: a key limited to some resources may not touch others (nor a whole collection)."""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class ScopeRule:
    facts = frozenset({"resource", "action"})  # the Target is made of both
    key_data = frozenset({"scope"})
    keyed_when = ""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        wanted = question.target
        if credential.scope.allows(wanted):
            return None
        where = repr(wanted.resource) if wanted.resource else "the whole of " + ", ".join(wanted.collections)
        return Decision(Code.RESOURCE_OUT_OF_SCOPE, f"the key is not scoped to {where}", credential)


SCOPE = ScopeRule()
