"""Decision codes: the proto enum and the domain's codes are the same set, each with an explicit HTTP status."""

from google.protobuf import descriptor_pb2

from keygate.domain.decision import HTTP_STATUS, Code
from keygate.v1 import authz_pb2


def test_every_proto_decision_code_is_a_domain_code_with_an_http_status() -> None:
    names = {v.name for v in authz_pb2.DecisionCode.DESCRIPTOR.values} - {"DECISION_CODE_UNSPECIFIED"}
    assert names == {code.value for code in Code}
    assert set(HTTP_STATUS) == set(Code)
    assert set(HTTP_STATUS.values()) == {200, 401, 403}


def test_rate_limited_is_reserved_until_limits_exist() -> None:
    assert "RATE_LIMITED" not in authz_pb2.DecisionCode.DESCRIPTOR.values_by_name
    enum = authz_pb2.DESCRIPTOR.enum_types_by_name["DecisionCode"]
    # Reserved so that no other code takes the name or the number before issue 10's limits.
    proto = descriptor_pb2.EnumDescriptorProto()
    enum.CopyToProto(proto)
    assert "RATE_LIMITED" in proto.reserved_name
    assert [(r.start, r.end) for r in proto.reserved_range] == [(11, 11)]
