"""Disabled: refused whatever is asked."""

from keygate.domain.decision import Code
from keygate.domain.evaluators.disabled import DISABLED

from .helpers import ask, cred


def test_disabled():
    assert DISABLED.evaluate(cred(), ask(cred())) is None
    off = cred(disabled=True)
    assert DISABLED.evaluate(off, ask(off)).code is Code.KEY_DISABLED
