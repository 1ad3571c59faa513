"""Decision codes: the proto enum and the domain's codes are the same set, each with an explicit HTTP status."""

from keygate.domain.decision import HTTP_STATUS, Code
from keygate.v1 import authz_pb2


def test_every_proto_decision_code_is_a_domain_code_with_an_http_status() -> None:
    names = {v.name for v in authz_pb2.DecisionCode.DESCRIPTOR.values} - {"DECISION_CODE_UNSPECIFIED"}
    assert names == {code.value for code in Code}
    assert set(HTTP_STATUS) == set(Code)
    assert set(HTTP_STATUS.values()) == {200, 401, 403, 429}


def test_limits_answer_429() -> None:
    assert HTTP_STATUS[Code.RATE_LIMITED] == HTTP_STATUS[Code.USAGE_EXCEEDED] == 429
    assert authz_pb2.DecisionCode.Value("RATE_LIMITED") == 11
