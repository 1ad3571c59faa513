"""Decision codes: the proto enum and the domain's codes are the same set, each with one explicit answer
(HTTP status, gRPC status, Envoy headers) in `CODES`."""

import grpc
import pytest
from google.rpc import code_pb2

from keygate.domain.decision import CODES, Code
from keygate.v1 import authz_pb2

EXPECTED = {  # code: (HTTP status, gRPC status for KeyService and Envoy's status, WWW-Authenticate, Retry-After)
    Code.OK: (200, "OK", False, False),
    Code.KEY_MISSING: (401, "UNAUTHENTICATED", True, False),
    Code.KEY_MALFORMED: (401, "UNAUTHENTICATED", True, False),
    Code.KEY_NOT_FOUND: (401, "UNAUTHENTICATED", True, False),
    Code.KEY_EXPIRED: (401, "UNAUTHENTICATED", True, False),
    Code.KEY_DISABLED: (401, "UNAUTHENTICATED", True, False),
    Code.RESOURCE_BOUND_TO_OTHER_KEY: (401, "UNAUTHENTICATED", True, False),
    Code.PERMISSION_DENIED: (403, "PERMISSION_DENIED", False, False),
    Code.RESOURCE_OUT_OF_SCOPE: (403, "PERMISSION_DENIED", False, False),
    Code.WORKSPACE_MISMATCH: (403, "PERMISSION_DENIED", False, False),
    Code.IP_NOT_ALLOWED: (403, "PERMISSION_DENIED", False, False),
    Code.RATE_LIMITED: (429, "RESOURCE_EXHAUSTED", False, True),
    Code.USAGE_EXCEEDED: (429, "RESOURCE_EXHAUSTED", False, True),
}


def test_every_proto_decision_code_is_a_domain_code_with_an_answer() -> None:
    names = {v.name for v in authz_pb2.DecisionCode.DESCRIPTOR.values} - {"DECISION_CODE_UNSPECIFIED"}
    assert names == {code.value for code in Code} == {code.name for code in Code}
    assert CODES.keys() == set(Code) == EXPECTED.keys()


@pytest.mark.parametrize("code", list(Code))
def test_each_code_answers_as_documented(code: Code) -> None:
    answer = CODES[code]
    assert (answer.http_status, answer.rpc, answer.challenge, answer.retry_after) == EXPECTED[code]
    assert code.http_status == answer.http_status
    assert grpc.StatusCode[answer.rpc] and code_pb2.Code.Value(answer.rpc) >= 0  # a real status on both wires


def test_new_codes_keep_their_fixed_numbers() -> None:
    names = ("RATE_LIMITED", "USAGE_EXCEEDED", "IP_NOT_ALLOWED")
    assert [authz_pb2.DecisionCode.Value(n) for n in names] == [11, 12, 13]
