"""Expiry: a key past its expire_time, or a rotated secret past its grace period, answers KEY_EXPIRED."""

from __future__ import annotations

from ..decision import Code, Credential, Decision
from .base import Question


class Expiry:
    facts = frozenset[str]()
    key_data = frozenset({"expire_time", "secret_expire_time"})
    keyed_when = ""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None:
        now = question.now
        if credential.secret_expire_time is not None and credential.secret_expire_time <= now:
            return Decision(Code.KEY_EXPIRED, "this key was rotated and its grace period has ended", credential)
        if credential.expire_time is not None and credential.expire_time <= now:
            return Decision(Code.KEY_EXPIRED, "the key has expired", credential)
        return None


EXPIRY = Expiry()
