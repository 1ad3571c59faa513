"""The upstream credential and public/refused routes through a real Envoy (the shipped configuration) in front
of an upstream that echoes the headers it received.

An allowed request reaches the upstream with `Authorization: Bearer <the workspace's Flowise key>` and never
with the caller's keygate key, whichever way it came; a denial reaches nothing and carries nothing; a public
route passes without a key and without a credential; a refused one never passes.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import time
import uuid
from pathlib import Path

import pytest

from keygate.v1 import keys_pb2

from .conftest import Mesh, Response
from .test_envoy import IDENTITY, assert_denied, bearer, not_upstream, seen_headers

FLOWISE_KEY = "flowise-ws1-Key_0123456789"
DEFAULT_KEY = "flowise-default-Key_9876543210"
RELOAD_BOUND = 3.0  # seconds: the file is looked at once a second


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "upstream.yaml"
    path.write_text(f"ws1: {FLOWISE_KEY}\n")
    return path


def authorization(response: Response) -> list[str]:
    return seen_headers(response).get("authorization", [])


def assert_forwarded(response: Response, key: keys_pb2.CreateKeyResponse, credential: str) -> None:
    """200 from the upstream, which saw keygate's identity, exactly one Authorization (the credential), no
    x-api-key, no apiKey parameter, and the caller's key nowhere."""
    assert response.status == 200, response
    headers = seen_headers(response)
    assert [headers.get(name) for name in IDENTITY] == [[key.key.id], [key.key.workspace_id], [key.key.name]]
    assert authorization(response) == [credential] and "x-api-key" not in headers
    assert "apiKey" not in response.json()["path"] and key.api_key not in response.body.decode()


def _raw(port: int, method: str, path: str, headers: list[tuple[str, str]]) -> Response:
    """A request whose headers may repeat (http.client's `request` takes a dict)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest(method, path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


@pytest.mark.parametrize("carrier", ["bearer", "x-api-key", "query"])
async def test_an_allowed_request_carries_the_workspace_credential_and_never_the_key(
        mesh: Mesh, credentials: Path, carrier: str) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["predictions:create"])
    flow = str(uuid.uuid4())
    headers = {"bearer": bearer(key.api_key), "x-api-key": {"X-API-Key": key.api_key}, "query": {}}[carrier]
    query = f"?apiKey={key.api_key}" if carrier == "query" else ""

    response = await mesh.request("POST", f"/api/v1/prediction/{flow}{query}", headers)

    assert_forwarded(response, key, f"Bearer {FLOWISE_KEY}")


async def test_a_callers_own_authorization_headers_are_all_replaced(mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["chatflows:view"])

    response = await asyncio.to_thread(_raw, mesh.envoy.port, "GET", "/api/v1/chatflows", [
        ("X-API-Key", key.api_key), ("Authorization", "Basic c29tZW9uZTplbHNl"), ("Authorization", "Bearer forged")])

    assert_forwarded(response, key, f"Bearer {FLOWISE_KEY}")


async def test_the_default_entry_serves_other_workspaces(mesh: Mesh, credentials: Path) -> None:
    credentials.write_text(f"ws1: {FLOWISE_KEY}\n'*': {DEFAULT_KEY}\n")
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="other", workspace_id="ws2", permissions=["chatflows:view"])

    response = await mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key))

    assert_forwarded(response, key, f"Bearer {DEFAULT_KEY}")


async def test_a_denial_carries_nothing_to_anyone(mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="reader", permissions=["chatflows:view"])

    response = await not_upstream(mesh, mesh.request("DELETE", f"/api/v1/chatflows/{uuid.uuid4()}",
                                                     bearer(key.api_key)))

    assert_denied(response, 403, "PERMISSION_DENIED")
    assert FLOWISE_KEY not in response.body.decode() and FLOWISE_KEY not in str(response.headers)


async def test_a_workspace_without_a_credential_is_refused_before_the_upstream(
        mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="stranger", workspace_id="ws-unlisted", permissions=["chatflows:view"])

    response = await not_upstream(mesh, mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key)))

    assert_denied(response, 500, "UPSTREAM_CREDENTIAL_MISSING")
    assert FLOWISE_KEY not in response.body.decode()


async def test_a_rotated_credential_is_used_within_seconds(mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["chatflows:view"])
    assert authorization(await mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key))) == [
        f"Bearer {FLOWISE_KEY}"]

    replacement = credentials.with_name("next.yaml")
    replacement.write_text("ws1: rotated-Key_42\n")
    os.replace(replacement, credentials)
    started = time.monotonic()
    while authorization(await mesh.request("GET", "/api/v1/chatflows", bearer(key.api_key))) != [
            "Bearer rotated-Key_42"]:
        assert time.monotonic() - started < RELOAD_BOUND, "the rotated credential was not picked up"
        await asyncio.sleep(0.05)


async def test_a_public_route_passes_without_a_key_credential_or_identity(mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["chatflows:view"])

    anonymous = await mesh.request("GET", "/api/v1/ping")
    keyed = await mesh.request("GET", f"/api/v1/ping?apiKey={key.api_key}",
                               {**bearer(key.api_key), "X-API-Key": key.api_key, "x-keygate-key-id": "forged"})

    for response in (anonymous, keyed):
        assert response.status == 200, response
        assert not [h for h in ("authorization", "x-api-key", "x-keygate-key-id") if h in seen_headers(response)]
    assert keyed.json()["path"] == "/api/v1/ping"
    assert key.api_key not in keyed.body.decode()


async def test_a_refused_route_never_reaches_the_upstream_nor_echoes_its_path(mesh: Mesh) -> None:
    key = await mesh.create(name="caller", permissions=["apikeys:view"])

    response = await not_upstream(mesh, mesh.request("GET", f"/api/v1/verify/apikey/{key.api_key}",
                                                     bearer(key.api_key)))

    assert_denied(response, 403, "ROUTE_REFUSED")
    assert key.api_key not in response.body.decode()


# --- the upstream's own logged-in UI ----------------------------------------------------------

SESSION = {"x-request-from": "internal", "Cookie": "token=header.payload.signature"}  # as Flowise's UI sends


async def test_a_keyless_session_call_is_flowises_to_verify(mesh: Mesh, credentials: Path) -> None:
    """No key, Flowise's session marker: passed on with its cookie, without identity or credential, so
    Flowise checks its own session as it does without keygate (a forged one gets Flowise's 401)."""
    await mesh.start(upstream_credentials=credentials)
    response = await mesh.request("GET", f"/api/v1/chatflows/{uuid.uuid4()}", {**SESSION, "X-Keygate-Key-Id": "forged"})
    assert response.status == 200, response
    headers = seen_headers(response)
    assert headers["x-request-from"] == ["internal"] and headers["cookie"] == [SESSION["Cookie"]]
    assert "authorization" not in headers and not set(IDENTITY) & set(headers)


async def test_a_keyed_call_loses_the_session_marker_and_carries_the_credential(mesh: Mesh, credentials: Path) -> None:
    """With a key, keygate decides and Flowise must check the injected credential, not the session riding along."""
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["chatflows:view"])
    response = await mesh.request("GET", f"/api/v1/chatflows/{uuid.uuid4()}", {**SESSION, **bearer(key.api_key)})
    assert_forwarded(response, key, f"Bearer {FLOWISE_KEY}")
    assert "x-request-from" not in seen_headers(response)


@pytest.mark.parametrize("marker", [{}, {"x-request-from": "external"}], ids=["no-marker", "other-value"])
async def test_a_keyless_call_without_the_marker_is_refused(mesh: Mesh, credentials: Path,
                                                              marker: dict[str, str]) -> None:
    await mesh.start(upstream_credentials=credentials)
    before = len(mesh.upstream.seen)
    response = await mesh.request("GET", f"/api/v1/chatflows/{uuid.uuid4()}",
                                  {"Cookie": SESSION["Cookie"], **marker})
    assert response.status == 401 and response.json()["code"] == "KEY_MISSING"
    assert len(mesh.upstream.seen) == before


# --- Flowise's web UI and its key API, whatever the spelling ----------------------------------


@pytest.mark.parametrize("path", ["/", "/assets/index-1a2b.js", "/chatflows"])
async def test_flowises_web_ui_is_served_without_a_key(mesh: Mesh, credentials: Path, path: str) -> None:
    await mesh.start(upstream_credentials=credentials)
    response = await mesh.request("GET", path)
    assert response.status == 200 and response.json()["path"] == path
    assert "authorization" not in seen_headers(response)


@pytest.mark.parametrize("path", ["/%61pi/v1/chatflows", "/API/v1/chatflows", "/%2561pi/v1/chatflows"])
async def test_no_spelling_of_an_api_path_passes_as_a_page(mesh: Mesh, credentials: Path, path: str) -> None:
    await mesh.start(upstream_credentials=credentials)
    before = len(mesh.upstream.seen)
    response = await mesh.request("GET", path)
    assert response.status in (401, 403) and len(mesh.upstream.seen) == before


@pytest.mark.parametrize("path", ["/API/V1/APIKEY", "/api/v1/ApiKey/k1", "/api/v1/apikey/"])
async def test_flowises_key_api_never_reaches_flowise_in_any_spelling(mesh: Mesh, credentials: Path,
                                                                      path: str) -> None:
    """Passed on with the upstream credential it would create Flowise's own plaintext keys."""
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="admin", permissions=["apikeys:create", "apikeys:view", "apikeys:update",
                                                        "apikeys:delete"])
    before = len(mesh.upstream.seen)
    for method in ("GET", "POST", "PUT", "DELETE"):
        response = await mesh.request(method, path, bearer(key.api_key), body=b'{"keyName": "x"}')
        assert response.status != 200 or "keyName" in response.body.decode(), (method, response)
    assert len(mesh.upstream.seen) == before


async def test_a_cors_preflight_reaches_flowise_without_a_key(mesh: Mesh, credentials: Path) -> None:
    """Flowise's embedded chat calls /prediction from other sites: the browser's preflight carries no key."""
    await mesh.start(upstream_credentials=credentials)
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    response = await mesh.request("OPTIONS", f"/api/v1/prediction/{uuid.uuid4()}", preflight)
    assert response.status == 200 and response.json()["method"] == "OPTIONS"
    assert "authorization" not in seen_headers(response)


async def test_an_unmatched_path_holding_a_key_is_not_echoed(mesh: Mesh, credentials: Path) -> None:
    await mesh.start(upstream_credentials=credentials)
    key = await mesh.create(name="caller", permissions=["chatflows:view"])
    flowise_shaped = "Ab3-_" * 9  # 45 base64url characters, as an imported Flowise key
    for secret in (key.api_key, flowise_shaped):
        response = await mesh.request("GET", f"/api/v1/nothing-here/{secret}")
        assert response.status == 403 and response.json()["code"] == "NO_MATCHING_ROUTE"
        assert secret not in response.body.decode() and "[redacted]" in response.json()["message"]
