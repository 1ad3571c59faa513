"""Binding: if any binding of the resource governs the action, only a bound key may use it.

It runs after every other pure rule allowed the request, on the bindings of (workspace, resource)
loaded for it (`Question.bindings`): a key that could not use the resource anyway learns nothing
about who it is bound to, and a request refused anyway costs no bindings lookup.
"""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class BindingRule:
    facts = frozenset({"resource", "action", "workspace_id"})
    key_data = frozenset({"key_id"})
    keyed_when = ""

    @staticmethod
    def slot(question: Question) -> tuple[str, str] | None:
        """The (workspace, resource) whose bindings this request needs; None for a collection request."""
        if question.target.resource and question.workspace_id:
            return question.workspace_id, question.target.resource
        return None

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        wanted = question.target
        governing = [b for b in question.bindings if wanted.action in b.actions]
        if not governing or any(b.key_id == credential.key_id for b in governing):
            return None
        return Decision(Code.RESOURCE_BOUND_TO_OTHER_KEY,
                        f"{wanted.resource!r} is bound to another key for {wanted.action!r}", credential)


BINDING = BindingRule()
