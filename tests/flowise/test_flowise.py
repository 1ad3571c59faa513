"""keygate in front of a real Flowise 3.1.4, through `keygate gateway` (Envoy from the shipped configuration).

Issue 9, part 4: what a Flowise client sees through the gateway, and what Flowise itself receives: the
relay between Envoy and Flowise records every request Flowise is sent, and Flowise's own request log
confirms it. The session's set-up is an operator's: Flowise's keys imported into keygate
(`keygate import flowise`), one Flowise key as the upstream credential, `keygate gateway` in front.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from keygate.v1 import keys_pb2, keys_pb2_grpc

from ..flowise_routes_extract import compare
from .conftest import BOUND_REPLY, Flowise, FlowiseKeys, Gateway, Relay, Response, Seen, flowise_package, wait_until

pytestmark = pytest.mark.flowise

REVOCATION_BOUND = 1.0  # seconds, from the issue
POLL = 0.01
REPLY = "keygate e2e: Flowise answered"
API = "/api/v1/apikey"
# The caller Flowise's key page would be: keys on the key API, and what the keys it creates may hold.
ADMIN = ["apikeys:*", "chatflows:view", "chatflows:create", "predictions:create"]


@pytest.fixture(scope="session")
def chatflow(flowise: Flowise) -> str:
    return flowise.create_chatflow(REPLY)


@pytest.fixture(scope="session")
def issued() -> list[str]:
    """Every key a client of the gateway used in this session: none may ever reach Flowise."""
    return []


@pytest.fixture(scope="session")
def admin(gateway: Gateway, flowise: Flowise, issued: list[str]) -> str:
    """A keygate key for Flowise's workspace made with KeyService (as root), for the key API."""
    with grpc.insecure_channel(gateway.keygate) as channel:
        created = keys_pb2_grpc.KeyServiceStub(channel).CreateKey(
            keys_pb2.CreateKeyRequest(name="key page", permissions=ADMIN, workspace_id=flowise.workspace_id),
            metadata=(("authorization", f"Bearer {gateway.root}"),), timeout=5)
    issued.append(created.api_key)
    return created.api_key


@pytest.fixture
def create_key(gateway: Gateway, admin: str, issued: list[str]) -> Iterator[Callable[..., dict[str, Any]]]:
    """`POST /api/v1/apikey` through the gateway, as Flowise's UI calls it: a keygate key."""
    def create(permissions: list[str]) -> dict[str, Any]:
        answer = gateway.request("POST", API, ui(admin), {"keyName": f"e2e {uuid.uuid4().hex[:6]}",
                                                          "permissions": permissions})
        assert answer.status == 200, answer
        issued.append(answer.json()["apiKey"])
        return dict(answer.json())

    yield create


def ui(key: str) -> dict[str, str]:
    """The headers of Flowise's UI client (axios), with a key as the Bearer token."""
    return {"Authorization": f"Bearer {key}", "x-request-from": "internal"}


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
    """Flowise got none of `keys`: not in any header, not in the path or query."""
    assert "apiKey" not in parse_qs(urlsplit(seen.path).query), seen.path
    for key in keys:
        assert key not in seen.path
        assert not [name for name, value in seen.headers if key in value], seen.headers


def assert_forwarded(seen: list[Seen], method: str, path: str, caller: str, upstream: str) -> Seen:
    """One request reached Flowise, carrying the upstream credential instead of the caller's key."""
    (request,) = seen
    assert (request.method, request.path) == (method, path)
    assert request.header("authorization") == [f"Bearer {upstream}"]
    assert_keyless(request, caller)
    return request


def assert_refused(response: Response, status: int, code: str) -> None:
    """keygate's own denial (its JSON body and code), not Flowise's 401."""
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


def chatflow_ids(response: Response) -> list[str]:
    assert response.status == 200, response
    return [flow["id"] for flow in response.json()]


# --- the set-up itself --------------------------------------------------------------------------------


def test_the_installed_flowise_has_exactly_the_routes_keygate_has_rules_for() -> None:
    """The committed route list that keygate's rules are checked against (tests/unit/test_flowise_routes.py)
    is the route list of the Flowise these tests run."""
    assert compare(flowise_package() / "dist") == []


def test_flowise_is_reachable_only_as_keygate_allows(gateway: Gateway, relay: Relay) -> None:
    """A route Flowise whitelists stays public through the gateway; anything else needs a key."""
    pong, seen = through(relay, lambda: gateway.request("GET", "/api/v1/ping"))
    assert (pong.status, pong.body) == (200, b"pong")
    assert [s.path for s in seen] == ["/api/v1/ping"]

    refused, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows"))
    assert_refused(refused, 401, "KEY_MISSING")
    assert seen == []


def test_flowises_own_ui_works_through_the_gateway_on_its_session(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str) -> None:
    """Flowise's UI: its page is served, and its API calls (login session, `x-request-from: internal`, no key)
    reach Flowise as they came, which answers them from the session; a forged session gets Flowise's 401."""
    page, seen = through(relay, lambda: gateway.request("GET", "/"))
    assert page.status == 200 and b"<html" in page.body.lower() and [s.path for s in seen] == ["/"]

    ui = {"Cookie": flowise.cookie, "x-request-from": "internal"}
    listed, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows", ui))
    assert chatflow in chatflow_ids(listed)
    (request,) = seen
    assert request.header("authorization") == [] and request.header("x-keygate-key-id") == []

    forged = {"Cookie": "token=eyJhbGciOiJIUzI1NiJ9.e30.forged", "x-request-from": "internal"}
    refused, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows", forged))
    assert refused.status == 401 and len(seen) == 1  # Flowise's own answer to a session it did not issue


def test_a_cors_preflight_is_answered_by_flowise(gateway: Gateway, relay: Relay, chatflow: str) -> None:
    """Flowise's embedded chat calls /prediction from other sites; the browser's preflight has no key."""
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    answer, seen = through(relay, lambda: gateway.request("OPTIONS", f"/api/v1/prediction/{chatflow}", preflight))
    assert answer.status in (200, 204), answer
    assert answer.header("access-control-allow-methods") is not None  # Flowise's cors middleware answered
    assert [(s.method, s.header("authorization")) for s in seen] == [("OPTIONS", [])]


# --- issue 9, part 4 ------------------------------------------------------------------------------------


def test_an_imported_flowise_key_works_unchanged_through_the_gateway(
        gateway: Gateway, relay: Relay, flowise: Flowise, flowise_keys: FlowiseKeys, chatflow: str,
        issued: list[str]) -> None:
    key = flowise_keys.client["apiKey"]  # made by Flowise, imported into keygate, presented as it always was
    issued.append(key)
    client = flowise_keys.client
    reported = f"key {client['id']} 'existing client' workspace {flowise.workspace_id}: imported"
    assert [line for line in gateway.imported.splitlines() if line.startswith(reported)], gateway.imported
    assert key not in gateway.imported

    response, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows", bearer(key)))

    assert chatflow in chatflow_ids(response)  # Flowise's own answer: it accepted the request
    request = assert_forwarded(seen, "GET", "/api/v1/chatflows", key, gateway.upstream)
    assert request.header("x-keygate-key-id") == [flowise_keys.client["id"]]  # the same id as in Flowise
    # keygate decides: the same key, now asking for what it never had, is refused before Flowise.
    refused, seen = through(relay, lambda: gateway.request("POST", "/api/v1/chatflows", bearer(key), {"name": "x"}))
    assert_refused(refused, 403, "PERMISSION_DENIED")
    assert seen == []


def test_a_key_flowise_made_after_the_import_is_not_keygates(gateway: Gateway, relay: Relay) -> None:
    """Flowise's own key table no longer decides: a Flowise key made after the import, such as the upstream
    credential itself (every permission in Flowise), is unknown at the gateway."""
    response, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows", bearer(gateway.upstream)))
    assert_refused(response, 401, "KEY_NOT_FOUND")
    assert seen == []


def test_a_key_created_through_the_gateways_apikey_api_works_on_flowises_routes(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str,
        create_key: Callable[..., dict[str, Any]]) -> None:
    before = {k["id"] for k in flowise.api_keys()}
    created, seen = through(relay, lambda: create_key(["chatflows:view"]))
    assert seen == []  # keygate answered the key API: Flowise was not asked
    assert {k["id"] for k in flowise.api_keys()} == before  # and made no key of its own
    assert created["keyName"].startswith("e2e ") and created["permissions"] == ["chatflows:view"]

    response, seen = through(relay, lambda: gateway.request("GET", "/api/v1/chatflows", bearer(created["apiKey"])))

    assert chatflow in chatflow_ids(response)
    request = assert_forwarded(seen, "GET", "/api/v1/chatflows", created["apiKey"], gateway.upstream)
    assert request.header("x-keygate-key-id") == [created["id"]]


def test_a_key_without_the_permission_gets_403_from_keygate_before_flowise_sees_the_request(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str,
        create_key: Callable[..., dict[str, Any]]) -> None:
    key = create_key(["chatflows:view"])["apiKey"]
    token = uuid.uuid4().hex  # in the query: Flowise logs every URL it serves

    response, seen = through(relay, lambda: ask(gateway, chatflow, bearer(key), f"?refused={token}"))

    assert_refused(response, 403, "PERMISSION_DENIED")
    assert_flowise_never_saw(flowise, seen, token)


def test_a_revoked_key_is_refused_within_a_second(
        gateway: Gateway, admin: str, create_key: Callable[..., dict[str, Any]]) -> None:
    created = create_key(["chatflows:view"])
    flows = lambda: gateway.request("GET", "/api/v1/chatflows", bearer(created["apiKey"]))  # noqa: E731
    assert flows().status == 200  # cached by keygate now

    deleted = gateway.request("DELETE", f"{API}/{created['id']}", ui(admin))  # revoked the way Flowise's UI does
    assert deleted.status == 200, deleted
    started = time.monotonic()
    while (response := flows()).status == 200:
        assert time.monotonic() - started <= REVOCATION_BOUND, "the revoked key still works"
        time.sleep(POLL)

    assert time.monotonic() - started <= REVOCATION_BOUND
    assert_refused(response, 401, "KEY_NOT_FOUND")


def test_the_query_parameter_key_works_on_prediction_routes_only(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str,
        create_key: Callable[..., dict[str, Any]]) -> None:
    key = create_key(["predictions:create", "chatflows:view"])["apiKey"]

    response, seen = through(relay, lambda: ask(gateway, chatflow, query=f"?apiKey={key}"))
    assert response.status == 200, response
    assert response.json()["text"] == REPLY
    assert_forwarded(seen, "POST", f"/api/v1/prediction/{chatflow}", key, gateway.upstream)

    refused, seen = through(relay, lambda: gateway.request("GET", f"/api/v1/chatflows?apiKey={key}"))
    assert_refused(refused, 401, "KEY_MISSING")  # a chatflows route takes no query key, even a valid one
    assert_flowise_never_saw(flowise, seen, key)


def test_a_prediction_on_the_chatflow_is_answered_by_flowise(
        gateway: Gateway, relay: Relay, flowise: Flowise, chatflow: str,
        create_key: Callable[..., dict[str, Any]]) -> None:
    key = create_key(["predictions:create"])

    response, seen = through(relay, lambda: ask(gateway, chatflow, bearer(key["apiKey"])))

    assert response.status == 200, response
    assert response.json()["text"] == REPLY  # Flowise ran the flow: its Direct Reply node answered
    request = assert_forwarded(seen, "POST", f"/api/v1/prediction/{chatflow}", key["apiKey"],
                               gateway.upstream)
    assert request.header("x-keygate-key-id") == [key["id"]]
    wait_until(lambda: flowise.saw("POST", f"/api/v1/prediction/{chatflow}"), 5, "Flowise logging the prediction")


def test_flowise_never_receives_a_callers_key(
        gateway: Gateway, relay: Relay, chatflow: str,
        create_key: Callable[..., dict[str, Any]], issued: list[str]) -> None:
    """Every carrier keygate reads, then everything Flowise was sent in this session, against every key a
    client used; the only key Flowise ever got is the upstream credential."""
    key = create_key(["predictions:create"])["apiKey"]
    for headers, query in ((bearer(key), ""), ({"x-api-key": key}, ""), ({}, f"?apiKey={key}")):
        assert ask(gateway, chatflow, headers, query).status == 200

    assert len(relay.seen) >= 3
    for seen in relay.seen:
        assert_keyless(seen, *issued)
        assert seen.header("authorization") in ([], [f"Bearer {gateway.upstream}"])
        assert seen.header("x-api-key") == []


def test_a_chatflow_specific_key_moves_from_flowise_to_a_keygate_binding(
        gateway: Gateway, relay: Relay, flowise: Flowise, flowise_keys: FlowiseKeys,
        create_key: Callable[..., dict[str, Any]], issued: list[str]) -> None:
    """Flowise's chat_flow.apikeyid became a keygate binding, and the import cleared Flowise's own (which
    would refuse the upstream credential): the bound key runs the flow, any other key is refused by keygate."""
    flow, client = flowise_keys.bound_flow, flowise_keys.client
    reported = f"flow {flow}: bound chatflows/{flow} to key {client['id']}"
    assert reported in gateway.imported.splitlines(), gateway.imported
    assert flowise.admin("GET", f"/api/v1/chatflows/{flow}").json()["apikeyid"] in (None, "")
    issued.append(client["apiKey"])

    response, seen = through(relay, lambda: ask(gateway, flow, bearer(client["apiKey"])))
    assert response.status == 200, response
    assert response.json()["text"] == BOUND_REPLY
    assert_forwarded(seen, "POST", f"/api/v1/prediction/{flow}", client["apiKey"], gateway.upstream)

    other = create_key(["predictions:create"])["apiKey"]
    token = uuid.uuid4().hex
    refused, seen = through(relay, lambda: ask(gateway, flow, bearer(other), f"?refused={token}"))
    assert_refused(refused, 401, "RESOURCE_BOUND_TO_OTHER_KEY")
    assert_flowise_never_saw(flowise, seen, token)


def test_the_gateway_log_holds_no_key(gateway: Gateway, issued: list[str]) -> None:
    """keygate's log and Envoy's access log, as the gateway prints them, after every test above."""
    text = Path(gateway.output).read_text(errors="replace")
    assert gateway.access_log(), "no Envoy access-log line"
    for key in [*issued, gateway.upstream]:
        assert key not in text
