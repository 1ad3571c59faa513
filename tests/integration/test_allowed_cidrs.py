"""allowed_cidrs through the real channel: stored canonical, enforced by Check and BatchCheck (fail closed
without an address), by KeyService on its caller's peer address, and never widened by a caller.

The client connects from 127.0.0.1, so a caller key limited to 127.0.0.0/8 may manage keys and one limited
to 10.0.0.0/8 may not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, rpc_error

ADMIN = ["apikeys:create", "apikeys:view", "apikeys:update", "chatflows:view"]


async def check(client: Client, api_key: str, address: str) -> str:
    response = await client.authz.Check(authz_pb2.CheckRequest(api_key=api_key, action="chatflows:view",
                                                               client_address=address))
    assert response.http_status == {"OK": 200, "IP_NOT_ALLOWED": 403}[authz_pb2.DecisionCode.Name(response.code)]
    return authz_pb2.DecisionCode.Name(response.code)


async def update_cidrs(client: Client, caller: str, key_id: str, cidrs: list[str]) -> keys_pb2.ApiKey:
    return await client.keys.UpdateKey(
        keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key_id, allowed_cidrs=cidrs),
                                  update_mask=field_mask_pb2.FieldMask(paths=["allowed_cidrs"])),
        metadata=auth(caller))


async def test_stored_canonical_shown_and_enforced(client: Client) -> None:
    created = await client.create(allowed_cidrs=["10.0.0.0/8", "2001:DB8::/32", "::ffff:192.168.0.0/112",
                                                 "10.0.0.0/8"])
    canonical = ["10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"]
    assert list(created.key.allowed_cidrs) == canonical
    got = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=created.key.id), metadata=auth(client.root))
    assert list(got.allowed_cidrs) == canonical
    listed = await client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(client.root))
    assert [list(k.allowed_cidrs) for k in listed.keys if k.id == created.key.id] == [canonical]

    key = created.api_key
    outcomes = {address: await check(client, key, address) for address in (
        "10.1.2.3", "::ffff:10.1.2.3", "::FFFF:a01:203", "2001:db8::1", "192.168.7.7", "11.0.0.1", "2001:db9::1",
        "::ffff:11.0.0.1", "")}
    assert outcomes == {
        "10.1.2.3": "OK", "::ffff:10.1.2.3": "OK", "::FFFF:a01:203": "OK", "2001:db8::1": "OK", "192.168.7.7": "OK",
        "11.0.0.1": "IP_NOT_ALLOWED", "2001:db9::1": "IP_NOT_ALLOWED", "::ffff:11.0.0.1": "IP_NOT_ALLOWED",
        "": "IP_NOT_ALLOWED",  # no address: fail closed
    }
    # A repeated (remembered) question keeps its answer per address.
    assert [await check(client, key, a) for a in ("11.0.0.1", "10.1.2.3", "11.0.0.1")] == \
        ["IP_NOT_ALLOWED", "OK", "IP_NOT_ALLOWED"]

    batch = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(
        api_key=key, client_address="11.0.0.1", items=[authz_pb2.BatchCheckItem(action="chatflows:view")]))
    assert [r.code for r in batch.results] == [authz_pb2.IP_NOT_ALLOWED]
    batch = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(
        api_key=key, client_address="10.0.0.9", items=[authz_pb2.BatchCheckItem(action="chatflows:view")]))
    assert [r.code for r in batch.results] == [authz_pb2.OK]

    unlimited = await client.create()
    assert [await check(client, unlimited.api_key, a) for a in ("", "11.0.0.1")] == ["OK", "OK"]

    error = await rpc_error(client.authz.Check(authz_pb2.CheckRequest(
        api_key=key, action="chatflows:view", client_address="10.0.0.1:80")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "client_address" in field_violations(error)


async def test_an_update_takes_effect_and_bad_networks_name_the_field(client: Client) -> None:
    created = await client.create()
    assert await check(client, created.api_key, "11.0.0.1") == "OK"
    await update_cidrs(client, client.root, created.key.id, ["10.0.0.0/8"])
    deadline = time.monotonic() + 5
    while await check(client, created.api_key, "11.0.0.1") == "OK" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await check(client, created.api_key, "11.0.0.1") == "IP_NOT_ALLOWED"

    for cidrs, field in ((["10.0.0.0/8", "10.0.0.1/8"], "allowed_cidrs[1]"), (["nope"], "allowed_cidrs[0]"),
                         ([f"10.0.{i}.0/24" for i in range(101)], "allowed_cidrs")):
        error = await rpc_error(client.create(allowed_cidrs=cidrs))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(error), cidrs
        error = await rpc_error(update_cidrs(client, client.root, created.key.id, cidrs))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and field in field_violations(error), cidrs


async def test_a_limited_caller_cannot_widen_and_is_held_to_its_own_networks(client: Client) -> None:
    local = (await client.create(permissions=ADMIN, allowed_cidrs=["127.0.0.0/8", "2001:db8::/32"])).api_key
    inside = await client.create(local, permissions=["chatflows:view"], allowed_cidrs=["127.0.0.0/16",
                                                                                        "2001:db8:1::/48"])
    assert list(inside.key.allowed_cidrs) == ["127.0.0.0/16", "2001:db8:1::/48"]
    for cidrs in (["10.0.0.0/8"], [], ["0.0.0.0/0"], ["2001::/16"], ["::ffff:0.0.0.0/96"]):
        error = await rpc_error(client.create(local, permissions=["chatflows:view"], allowed_cidrs=cidrs))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, cidrs
        error = await rpc_error(update_cidrs(client, local, inside.key.id, cidrs))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, cidrs
    narrowed = await update_cidrs(client, local, inside.key.id, ["127.0.0.0/24"])
    assert list(narrowed.allowed_cidrs) == ["127.0.0.0/24"]

    remote = (await client.create(permissions=ADMIN, allowed_cidrs=["10.0.0.0/8"])).api_key
    error = await rpc_error(client.keys.GetKey(keys_pb2.GetKeyRequest(id=inside.key.id), metadata=auth(remote)))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "network" in (error.details() or "")


# --- the Envoy door: the source address Envoy reports -----------------------------------------------

LISTED = ["10.0.0.0/8", "2001:db8::/32"]
NETWORKS = [ipaddress.ip_network(c) for c in LISTED]


async def envoy_status(client: Client, api_key: str, address: str) -> int:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/api/v1/chatflows/f1"
    http.headers["authorization"] = f"Bearer {api_key}"
    request.attributes.source.address.socket_address.address = address
    answer = await external_auth_pb2_grpc.AuthorizationStub(client.channel).Check(request)
    return 200 if answer.HasField("ok_response") else answer.denied_response.status.code


def admitted(address: str) -> bool:
    """The oracle: the address, IPv4-mapped IPv6 read as IPv4, inside a listed network."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in NETWORKS)


def spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if isinstance(address, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        return [str(address), f"::ffff:{address}", f"::FFFF:{address}", mapped.exploded, mapped.compressed]
    return [str(address), address.exploded, address.exploded.upper(), address.compressed.upper()]


async def test_envoy_source_addresses_ipv4_and_ipv6(client: Client) -> None:
    key = (await client.create(allowed_cidrs=LISTED)).api_key
    statuses = {a: await envoy_status(client, key, a) for a in (
        "10.9.8.7", "::ffff:10.9.8.7", "2001:db8:ffff::1", "11.0.0.1", "2001:db9::1", "::1", "")}
    assert statuses == {"10.9.8.7": 200, "::ffff:10.9.8.7": 200, "2001:db8:ffff::1": 200, "11.0.0.1": 403,
                        "2001:db9::1": 403, "::1": 403, "": 403}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=st.one_of(st.ip_addresses(network="10.0.0.0/8"), st.ip_addresses(v=4),
                         st.ip_addresses(network="2001:db8::/32"), st.ip_addresses(v=6),
                         st.ip_addresses(network="::ffff:0:0/96")))
async def test_no_spelling_of_an_address_changes_its_verdict(client: Client, address) -> None:
    key = await listed_key(client)
    want = 200 if admitted(str(address)) else 403
    assert {s: await envoy_status(client, key, s) for s in spellings(address)} == \
        dict.fromkeys(spellings(address), want)


_KEYS: dict[int, str] = {}


async def listed_key(client: Client) -> str:
    """One listed key per client (hypothesis runs the test many times on one fixture)."""
    if id(client) not in _KEYS:
        _KEYS.clear()
        _KEYS[id(client)] = (await client.create(allowed_cidrs=LISTED)).api_key
    return _KEYS[id(client)]
