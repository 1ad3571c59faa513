"""Binding: only a bound key may use a resource for the actions its bindings govern."""

import pytest

from keygate.domain.decision import Code
from keygate.domain.evaluators.binding import BINDING

from .helpers import ME, USE, ask, bind, cred


@pytest.mark.parametrize(("action", "bindings", "allowed"), [
    (USE, (), True),
    (USE, (bind(),), False),
    (USE, (bind(), bind(ME)), True),  # one of several bound keys
    (USE, (bind(ME),), True),
    ("chatflows:update", (bind(),), True),  # a binding governs use, not management
    (USE, (bind(actions=("chatflows:update",)),), True),
    ("chatflows:update", (bind(actions=("chatflows:update",)),), False),
])
def test_binding(action, bindings, allowed):
    refused = BINDING.evaluate(cred(), ask(cred(), action=action, bindings=bindings))
    assert (refused is None) is allowed
    assert allowed or refused.code is Code.RESOURCE_BOUND_TO_OTHER_KEY


def test_slot_only_for_a_resource_in_a_workspace():
    assert BINDING.slot(ask(cred())) == ("ws1", "chatflows/abc")
    assert BINDING.slot(ask(cred(), resource="", action="chatflows:update")) is None
