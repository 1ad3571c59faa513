"""keygate.client's Decision and DecisionCode: the wire's codes by name, unknown numbers read safely."""

from __future__ import annotations

import dataclasses

import pytest

from keygate.client import Decision, DecisionCode
from keygate.v1 import authz_pb2


def test_every_wire_code_has_its_name_in_the_client() -> None:
    assert set(authz_pb2.DecisionCode.keys()) <= {code.value for code in DecisionCode}
    assert all(code.name == code.value for code in DecisionCode)


def test_a_response_becomes_a_frozen_decision() -> None:
    response = authz_pb2.CheckResponse(allowed=False, code=authz_pb2.PERMISSION_DENIED, reason="no", key_id="k",
                                       key_name="n", workspace_id="w", http_status=403)
    decision = Decision.from_response(response)
    assert decision == Decision(False, DecisionCode.PERMISSION_DENIED, "no", 403, "k", "n", "w")
    assert (decision.rate_limit, decision.credits_remaining) == (None, None)  # no limits reported
    assert decision.code == "PERMISSION_DENIED"  # a str enum: compares, logs and serializes as its name
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = True  # type: ignore[misc]


def test_a_code_this_client_does_not_know_reads_as_unspecified() -> None:
    assert DecisionCode.from_wire(999) is DecisionCode.DECISION_CODE_UNSPECIFIED
    assert Decision.from_response(authz_pb2.CheckResponse(code=999)).allowed is False  # type: ignore[arg-type]
