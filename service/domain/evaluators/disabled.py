"""Disabled: a disabled key answers KEY_DISABLED, whatever it asks for."""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class Disabled:
    facts = frozenset[str]()
    key_data = frozenset({"disabled"})
    keyed_when = ""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        return Decision(Code.KEY_DISABLED, "the key is disabled", credential) if credential.disabled else None


DISABLED = Disabled()
