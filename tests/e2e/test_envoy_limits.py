"""Rate limits and credits through a real Envoy (the shipped envoy.yaml): 429 with Retry-After and the
IETF RateLimit headers, the same headers on allowed responses, and the key's limits in the metadata."""

from __future__ import annotations

import re

from google.protobuf import duration_pb2

from keygate.v1 import keys_pb2

from .conftest import Mesh


def per_hour(n: int) -> keys_pb2.RateLimit:
    return keys_pb2.RateLimit(name="hourly", limit=n, window=duration_pb2.Duration(seconds=3600))


async def test_a_spent_rate_limit_is_429_with_retry_after_and_ratelimit_headers(mesh: Mesh) -> None:
    key = await mesh.create(permissions=["chatflows:view"], rate_limits=[per_hour(2)])
    headers = {"Authorization": f"Bearer {key.api_key}"}
    first, second, third = [await mesh.request("GET", "/api/v1/chatflows", headers) for _ in range(3)]
    assert (first.status, second.status) == (200, 200)
    assert first.headers["ratelimit-policy"] == '"hourly";q=2;w=3600'
    assert re.fullmatch(r'"hourly";r=1;t=\d+', first.headers["ratelimit"])
    assert re.fullmatch(r'"hourly";r=0;t=\d+', second.headers["ratelimit"])
    assert third.status == 429 and third.json()["code"] == "RATE_LIMITED"
    reset = int(third.headers["ratelimit"].rpartition("t=")[2])
    assert 1 <= int(third.headers["retry-after"]) <= 3600 and abs(int(third.headers["retry-after"]) - reset) <= 1
    assert third.headers["ratelimit-policy"] == '"hourly";q=2;w=3600'


async def test_spent_credits_are_429_without_retry_after_when_they_never_refill(mesh: Mesh) -> None:
    key = await mesh.create(permissions=["chatflows:view"], credits=keys_pb2.Credits(remaining=1))
    headers = {"Authorization": f"Bearer {key.api_key}"}
    assert (await mesh.request("GET", "/api/v1/chatflows", headers)).status == 200
    refused = await mesh.request("GET", "/api/v1/chatflows", headers)
    assert refused.status == 429 and refused.json()["code"] == "USAGE_EXCEEDED"
    assert "retry-after" not in refused.headers


async def test_a_key_without_limits_gets_no_ratelimit_headers(mesh: Mesh) -> None:
    key = await mesh.create(permissions=["chatflows:view"])
    response = await mesh.request("GET", "/api/v1/chatflows", {"Authorization": f"Bearer {key.api_key}"})
    assert response.status == 200 and "ratelimit" not in response.headers
