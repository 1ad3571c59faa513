"""keygate in front of a real Flowise 3.1.4, through `keygate gateway` (Envoy from the shipped configuration).

Issue 9, part 4: what a Flowise client sees through the gateway, and what Flowise itself receives (the relay
between Envoy and Flowise records every request Flowise is sent; Flowise's own request log confirms it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from keygate.v1 import keys_pb2, keys_pb2_grpc

from .conftest import Flowise, Gateway, Relay, Response, Seen, wait_until

pytestmark = pytest.mark.flowise

REVOCATION_BOUND = 1.0  # seconds, from the issue
POLL = 0.01
REPLY = "keygate e2e: Flowise answered"
KEY_CARRIERS = ("authorization", "x-api-key")


@pytest.fixture(scope="session")
def chatflow(flowise: Flowise) -> str:
    return flowise.create_chatflow(REPLY)


@pytest.fixture(scope="session")
def issued() -> list[str]:
    """Every keygate key the session made: none may ever reach Flowise."""
    return []


@pytest.fixture
def keys(gateway: Gateway, issued: list[str]) -> Iterator[Callable[..., keys_pb2.CreateKeyResponse]]:
    """Create keygate keys (KeyService, as root) in Flowise's workspace unless told otherwise."""
    channel = grpc.insecure_channel(gateway.keygate)
    stub = keys_pb2_grpc.KeyServiceStub(channel)

    def create(**fields: Any) -> keys_pb2.CreateKeyResponse:
        fields.setdefault("name", "e2e")
        fields.setdefault("workspace_id", "e2e")
        created = stub.CreateKey(keys_pb2.CreateKeyRequest(**fields), metadata=root(gateway), timeout=5)
        issued.append(created.api_key)
        return created

    create.stub = stub  # type: ignore[attr-defined]
    yield create
    channel.close()


def root(gateway: Gateway) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {gateway.root}"),)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(gateway: Gateway, chatflow: str, headers: dict[str, str] | None = None, query: str = "") -> Response:
    return gateway.request("POST", f"/api/v1/prediction/{chatflow}{query}", headers, {"question": "hello"})


def through(relay: Relay, request: Callable[[], Response]) -> tuple[Response, list[Seen]]:
    """A request through the gateway, and what Flowise was sent because of it."""
    mark = len(relay.seen)
    response = request()
    return response, relay.since(mark)


def assert_keyless(seen: Seen, *keys: str) -> None:
    """Flowise got no keygate key: not in any header, not in the query, not anywhere in the request line."""
    assert "apiKey" not in parse_qs(urlsplit(seen.path).query), seen.path
    for key in keys:
        assert key not in seen.path
        assert not [(name, value) for name, value in seen.headers if key in value], seen.headers


def assert_refused(response: Response, status: int, code: str) -> None:
    """keygate's own denial (JSON body with its code), not Flowise's 401."""
    assert (response.status, response.header("content-type")) == (status, "application/json"), response
    assert response.json()["code"] == code, response


def assert_flowise_never_saw(flowise: Flowise, seen: list[Seen], token: str) -> None:
    """Flowise never heard of a request: nothing of it went through the relay, and Flowise's own request
    log has no line holding `token` (unique to that request), read once a later request is logged."""
    assert seen == [], "a refused request reached Flowise"
    marker = uuid.uuid4().hex
    assert flowise.admin("GET", f"/api/v1/chatflows?marker={marker}").status == 200
    wait_until(lambda: any(marker in line for line in flowise.requests_seen()), 5, "Flowise logging a request")
    assert not [line for line in flowise.requests_seen() if token in line]


def test_prediction_through_the_gateway_is_answered_by_flowise_which_never_sees_the_key(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str, keys: Any) -> None:
    key = keys(permissions=["predictions:create"])

    response, seen = through(relay, lambda: ask(gateway, chatflow, bearer(key.api_key)))

    assert response.status == 200, response
    assert response.json()["text"] == REPLY  # Flowise ran the flow: its Direct Reply node answered
    (request,) = seen
    assert (request.method, request.path) == ("POST", f"/api/v1/prediction/{chatflow}")
    assert request.header("x-keygate-key-id") == [key.key.id]
    assert_keyless(request, key.api_key)
    wait_until(lambda: flowise.saw("POST", f"/api/v1/prediction/{chatflow}"), 5, "Flowise logging the prediction")


def test_query_key_works_on_prediction_routes_only(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str, keys: Any) -> None:
    key = keys(permissions=["predictions:create", "chatflows:view"])

    response, seen = through(relay, lambda: ask(gateway, chatflow, query=f"?apiKey={key.api_key}"))
    assert response.status == 200, response
    assert response.json()["text"] == REPLY
    (request,) = seen
    assert request.path == f"/api/v1/prediction/{chatflow}"  # the key stripped from the query
    assert_keyless(request, key.api_key)

    refused, seen = through(relay, lambda: gateway.request("GET", f"/api/v1/chatflows?apiKey={key.api_key}"))
    assert_refused(refused, 401, "KEY_MISSING")  # a chatflows route takes no query key, even a valid one
    assert_flowise_never_saw(flowise, seen, key.api_key)


def test_key_without_the_permission_gets_403_from_keygate_before_flowise_sees_the_request(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str, keys: Any) -> None:
    key = keys(permissions=["chatflows:view"])

    token = uuid.uuid4().hex  # in the query: Flowise logs every URL it serves
    response, seen = through(relay, lambda: ask(gateway, chatflow, bearer(key.api_key), f"?refused={token}"))

    assert_refused(response, 403, "PERMISSION_DENIED")
    assert_flowise_never_saw(flowise, seen, token)


def test_revoked_key_is_refused_within_a_second(gateway: Gateway, relay: Relay, chatflow: str, keys: Any) -> None:
    key = keys(permissions=["predictions:create"])
    assert ask(gateway, chatflow, bearer(key.api_key)).status == 200  # cached by keygate now

    keys.stub.DeleteKey(keys_pb2.DeleteKeyRequest(id=key.key.id), metadata=root(gateway), timeout=5)
    started = time.monotonic()
    while (response := ask(gateway, chatflow, bearer(key.api_key))).status == 200:
        assert time.monotonic() - started <= REVOCATION_BOUND, "the revoked key still works"
        time.sleep(POLL)

    assert time.monotonic() - started <= REVOCATION_BOUND
    assert_refused(response, 401, "KEY_NOT_FOUND")


def test_flowise_never_received_a_keygate_key(
        gateway: Gateway, relay: Relay, chatflow: str, keys: Any, issued: list[str]) -> None:
    """Every carrier keygate reads, then everything Flowise was sent in this session, against every key
    the session issued."""
    key = keys(permissions=["predictions:create"])
    for headers, query in (({"Authorization": f"Bearer {key.api_key}"}, ""), ({"x-api-key": key.api_key}, ""),
                           ({}, f"?apiKey={key.api_key}")):
        assert ask(gateway, chatflow, headers, query).status == 200

    assert relay.seen
    for seen in relay.seen:
        assert_keyless(seen, *issued)
