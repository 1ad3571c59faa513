"""Every RPC keygate serves, fuzzed through a real gRPC channel against a real server on PostgreSQL.

Methods come from the service descriptors and requests from the message descriptors (strategies.py),
so a new method or field is fuzzed without editing this file: AuthzService's WatchChanges (a server
stream) was picked up as it landed, and is read by `Fuzzed._stream` (its first message or its status;
a stream still open after a second is an answer too). Each example is one call with one of the
credentials of `Keys.credentials` and is checked by `Fuzzed.assert_answer`; the examples of a test
share one server, so they are also a random sequence of changes, after which the fixture checks the
invariants (oracle.py). Example counts: conftest.py's profiles (`make fuzz` runs the long one).
"""

from __future__ import annotations

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from keygate.v1 import authz_pb2, flowise_pb2, keys_pb2

from .conftest import FUZZ
from .oracle import Fuzzed
from .strategies import requests

SERVICES: list[ServiceDescriptor] = [
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"],  # Check, BatchCheck, ListPermissions, WatchChanges
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
    flowise_pb2.DESCRIPTOR.services_by_name["FlowiseApiKeyService"],
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],  # Envoy ext_authz
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
CALLERS = ["root"] * 5 + ["narrow"] * 2 + ["unknown", "malformed", "basic", "none"]  # mostly past authentication
NOT_SERVED = {"grpc.health.v1.Health.List"}  # grpc's aio HealthServicer has none (test_hostile: UNIMPLEMENTED)


@pytest.mark.parametrize("service", SERVICES, ids=[s.name for s in SERVICES])
@FUZZ
@given(data=st.data())
async def test_any_request_to_any_method_is_answered_from_the_table_and_leaks_nothing(
    fuzzed: Fuzzed, service: ServiceDescriptor, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from([m for m in service.methods if m.full_name not in NOT_SERVED]),
                       label="method")
    credentials = fuzzed.keys.credentials()
    who = data.draw(st.sampled_from(CALLERS), label="credentials")
    request = data.draw(requests(method.input_type, fuzzed.keys.pools()), label="request")
    before = await fuzzed.state()
    answer = await fuzzed.call(f"/{service.full_name}/{method.name}", method, request, credentials[who])
    await fuzzed.assert_answer(f"{method.full_name} as {who}", request, answer, before)
