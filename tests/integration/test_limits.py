"""Rate limits and credits through a real gRPC channel and real PostgreSQL: KeyService fields, the
no-escalation rule, Check/BatchCheck metering, refusals that consume nothing, the outage mode."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, timedelta

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import duration_pb2, json_format

from keygate.v1 import authz_pb2, keys_pb2

from .support import auth, field_violations, rpc_error


def window(seconds: int) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def limit(n: int, seconds: int = 3600, name: str = "main") -> keys_pb2.RateLimit:
    return keys_pb2.RateLimit(name=name, limit=n, window=window(seconds))


async def test_a_rate_limited_key_is_refused_once_its_limit_is_spent(client):
    made = await client.create(rate_limits=[limit(5)])
    assert [(r.name, r.limit, r.window.seconds) for r in made.key.rate_limits] == [("main", 5, 3600)]
    answers = [await client.check(made.api_key) for _ in range(8)]
    assert [a.code for a in answers] == [authz_pb2.OK] * 5 + [authz_pb2.RATE_LIMITED] * 3
    assert [a.rate_limit.remaining for a in answers[:5]] == [4, 3, 2, 1, 0]
    refused = answers[-1]
    assert refused.http_status == 429 and not refused.allowed and "main" in refused.reason
    assert refused.rate_limit.reset_time.seconds % 3600 == 0


async def test_credits_are_spent_by_cost_and_never_go_below_zero(client):
    made = await client.create(credits=keys_pb2.Credits(remaining=10))
    first = await client.authz.Check(authz_pb2.CheckRequest(api_key=made.api_key, action="chatflows:view", cost=4))
    assert first.allowed and first.credits_remaining == 6
    too_much = await client.authz.Check(authz_pb2.CheckRequest(api_key=made.api_key, action="chatflows:view",
                                                               cost=7))
    assert too_much.code == authz_pb2.USAGE_EXCEEDED and too_much.http_status == 429
    assert too_much.credits_remaining == 6
    for _ in range(6):
        assert (await client.check(made.api_key)).allowed
    last = await client.check(made.api_key)
    assert last.code == authz_pb2.USAGE_EXCEEDED and last.credits_remaining == 0
    got = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=made.key.id), metadata=auth(client.root))
    assert got.credits.remaining == 0


async def test_a_key_without_limits_reports_none(client):
    made = await client.create()
    answer = await client.check(made.api_key)
    assert answer.allowed and not answer.HasField("rate_limit") and not answer.HasField("credits_remaining")


async def test_a_refusal_by_one_limit_consumes_nothing_from_the_others(client):
    """Unkey #1995: the hourly limit refuses, so the credits and the other limit stay untouched."""
    made = await client.create(rate_limits=[limit(100, 60, "minute"), limit(2, 3600, "hour")],
                               credits=keys_pb2.Credits(remaining=50))
    assert (await client.check(made.api_key)).allowed
    assert (await client.check(made.api_key)).allowed
    for _ in range(5):
        refused = await client.check(made.api_key)
        assert refused.code == authz_pb2.RATE_LIMITED and refused.rate_limit.name == "hour"
        assert refused.credits_remaining == 48


async def test_a_refusal_by_another_rule_consumes_nothing(client):
    made = await client.create(credits=keys_pb2.Credits(remaining=3))
    for _ in range(5):
        denied = await client.check(made.api_key, action="chatflows:delete")
        assert denied.code == authz_pb2.PERMISSION_DENIED and not denied.HasField("credits_remaining")
    assert (await client.check(made.api_key)).credits_remaining == 2


async def test_batch_check_meters_each_item_in_order(client):
    made = await client.create(credits=keys_pb2.Credits(remaining=5))
    reply = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(api_key=made.api_key, items=[
        authz_pb2.BatchCheckItem(action="chatflows:view", cost=2),
        authz_pb2.BatchCheckItem(action="chatflows:delete", cost=1),  # refused by permission: free
        authz_pb2.BatchCheckItem(action="chatflows:view", cost=4),  # 3 left: refused, spends nothing
        authz_pb2.BatchCheckItem(action="chatflows:view", cost=3),
    ]))
    assert [r.code for r in reply.results] == [authz_pb2.OK, authz_pb2.PERMISSION_DENIED, authz_pb2.USAGE_EXCEEDED,
                                               authz_pb2.OK]
    assert reply.results[3].credits_remaining == 0


@pytest.mark.parametrize("cost", [-1, 1001])
async def test_a_bad_cost_is_invalid_argument_naming_the_field(client, cost):
    made = await client.create(credits=keys_pb2.Credits(remaining=5))
    error = await rpc_error(client.authz.Check(authz_pb2.CheckRequest(api_key=made.api_key, action="chatflows:view",
                                                                      cost=cost)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "cost" in field_violations(error)


@pytest.mark.parametrize(("fields", "field"), [
    ({"rate_limits": [limit(0)]}, "rate_limits[0].limit"),
    ({"rate_limits": [keys_pb2.RateLimit(name="x", limit=1, window=duration_pb2.Duration(nanos=5))]},
     "rate_limits[0].window"),
    ({"credits": keys_pb2.Credits(remaining=-1)}, "credits.remaining"),
    ({"credits": keys_pb2.Credits(remaining=1, refill_amount=5)}, "credits.refill_amount"),
])
async def test_bad_limits_are_invalid_argument_naming_the_field(client, fields, field):
    error = await rpc_error(client.create(**fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(error)


async def test_a_limited_caller_cannot_create_a_looser_key(client):
    caller = await client.create(permissions=["apikeys:create", "chatflows:view"], rate_limits=[limit(10, 60)],
                                 credits=keys_pb2.Credits(remaining=100))
    for fields in ({}, {"rate_limits": [limit(11, 60)], "credits": keys_pb2.Credits(remaining=5)},
                   {"rate_limits": [limit(10, 30)], "credits": keys_pb2.Credits(remaining=5)},
                   {"rate_limits": [limit(10, 60)]},
                   {"rate_limits": [limit(10, 60)], "credits": keys_pb2.Credits(remaining=101)}):
        error = await rpc_error(client.create(caller.api_key, **fields))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, fields
    made = await client.create(caller.api_key, rate_limits=[limit(5, 120)], credits=keys_pb2.Credits(remaining=5))
    assert made.key.credits.remaining == 5


async def test_update_sets_limits_and_credits_by_mask(client):
    made = await client.create(credits=keys_pb2.Credits(remaining=1))
    assert (await client.check(made.api_key)).allowed
    assert not (await client.check(made.api_key)).allowed
    update = keys_pb2.UpdateKeyRequest(
        key=keys_pb2.ApiKey(id=made.key.id, credits=keys_pb2.Credits(remaining=3, refill_amount=3,
                                                                    refill_interval=window(3600)),
                            rate_limits=[limit(2)]))
    update.update_mask.paths.extend(["credits", "rate_limits"])
    updated = await client.keys.UpdateKey(update, metadata=auth(client.root))
    assert updated.credits.remaining == 3 and updated.credits.HasField("refill_time")
    assert [r.limit for r in updated.rate_limits] == [2]
    answers = [await client.check(made.api_key) for _ in range(3)]  # the change reaches the cache at once
    assert [a.code for a in answers] == [authz_pb2.OK, authz_pb2.OK, authz_pb2.RATE_LIMITED]
    assert answers[1].credits_remaining == 1


async def test_ext_authz_metadata_carries_the_key_id_and_its_limits(client):
    """What deploy/envoy/ratelimit-config.yaml's descriptors read: the key id, and per Envoy unit the
    tightest limit of exactly that window as a RateLimit.Override."""
    made = await client.create(rate_limits=[limit(100, 60, "minute"), limit(60, 60, "minute2"),
                                            limit(5000, 86400, "day"), limit(7, 90, "odd")])
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/api/v1/chatflows"
    http.headers["authorization"] = f"Bearer {made.api_key}"
    answer = await external_auth_pb2_grpc.AuthorizationStub(client.channel).Check(request)
    metadata = json_format.MessageToDict(answer.dynamic_metadata)
    assert metadata["key_id"] == made.key.id
    assert metadata["rate_limit_minute"] == {"requests_per_unit": 60, "unit": "MINUTE"}
    assert metadata["rate_limit_day"] == {"requests_per_unit": 5000, "unit": "DAY"}
    assert "rate_limit_second" not in metadata and "rate_limit_hour" not in metadata
    assert {r["name"]: r["window_seconds"] for r in metadata["rate_limits"]} == {
        "minute": 60, "minute2": 60, "day": 86400, "odd": 90}
    added = {h.header.key: h.header.value for h in answer.ok_response.response_headers_to_add}
    assert added["ratelimit-policy"] == '"odd";q=7;w=90'  # the fewest left: 6


async def test_credits_are_set_back_at_each_refill(client):
    made = await client.create(credits=keys_pb2.Credits(remaining=1, refill_amount=2, refill_interval=window(1)))
    assert made.key.credits.HasField("refill_time")
    assert (await client.check(made.api_key)).allowed
    assert (await client.check(made.api_key)).code == authz_pb2.USAGE_EXCEEDED
    await asyncio.sleep(made.key.credits.refill_time.ToDatetime(tzinfo=UTC).timestamp() - time.time() + 0.05)
    answers = [await client.check(made.api_key) for _ in range(3)]
    assert [a.code for a in answers] == [authz_pb2.OK, authz_pb2.OK, authz_pb2.USAGE_EXCEEDED]
    assert answers[1].credits_remaining == 0


async def test_leases_go_back_once_when_a_key_changes_and_at_shutdown(client, app):
    """A key reloaded with other limits starts new leases and gives back the old ones' unused part; at
    shutdown the rest goes back: the store then holds exactly what was not spent."""
    made = await client.create(credits=keys_pb2.Credits(remaining=6400))
    for _ in range(3):
        assert (await client.check(made.api_key)).allowed
    update = keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=made.key.id, rate_limits=[limit(1000)]))
    update.update_mask.paths.append("rate_limits")
    await client.keys.UpdateKey(update, metadata=auth(client.root))
    answers = await asyncio.gather(*(client.check(made.api_key) for _ in range(4)))
    assert all(a.allowed for a in answers)
    await app.meter.close()
    got = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=made.key.id), metadata=auth(client.root))
    assert got.credits.remaining == 6400 - 7
