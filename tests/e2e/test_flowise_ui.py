"""Flowise's UI key page through a real Envoy: the shipped deploy/envoy/envoy.yaml with its opt-in `#ui ` lines
turned on as README says, the JWKS made from Flowise's secret with README's command, and the UI key in an SDS
file. The UI's calls carry what Flowise 3.1.4's UI sends (the session cookie `token`, a JWT signed as
Flowise's `_generateJwtToken` signs it, and `x-request-from: internal`), never a key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from keygate import logs
from keygate.gateway import mappings
from keygate.v1 import keys_pb2

from .conftest import READY_TIMEOUT, ROOT, SHIPPED, UI_MARK, Envoy, Mesh, Response, Upstream, running_envoy

# Bearer callers are served exactly as without the UI key page: the whole door suite, run again here through
# this module's Envoy (pytest collects imported tests, with this module's fixtures).
from .test_flowise_door import (  # noqa: F401
    API,
    refused,
    secret_material,
    test_a_body_that_is_not_json_is_400,
    test_a_key_without_the_permission_is_403,
    test_bad_input_is_400_naming_the_field,
    test_escalation_is_403,
    test_keygate_unreachable_is_503,
    test_neighbouring_paths_stay_flowise_routes,
    test_no_working_key_is_401,
    test_other_calls_on_the_path_are_404,
    test_permissions_are_kept_as_sent,
    test_the_four_seed_calls,
    test_unknown_id_is_404,
)

# README's command: Flowise's JWT_AUTH_TOKEN_SECRET (its bytes, exactly as Flowise's file holds them) on stdin,
# a JWKS with that secret as an HS256 `oct` key on stdout.
JWKS_COMMAND = ('import base64,json,sys; k=base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode(); '
                'print(json.dumps({"keys":[{"kty":"oct","alg":"HS256","k":k}]}))')
UI_RIGHTS = ["apikeys:*", "chatflows:view", "chatflows:update"]
USER_ID = "5f0e7a4e-3b1c-4a51-9a55-2d1f4a0e9c11"  # the Flowise user of the session


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def flowise_jwt(secret: str, *, alg: str = "HS256", **claims: Any) -> str:
    """A session token as Flowise 3.1.4 signs it (jsonwebtoken `sign`, HS256 with the secret string's bytes):
    {id, username, meta, iat, nbf, exp, aud, iss}, `meta` being Flowise's encrypted `userId:workspaceId`."""
    now = int(time.time())
    payload = {"id": USER_ID, "username": "Ann", "meta": "U2FsdGVkX1+opaque", "iat": now, "nbf": now,
               "exp": now + 3600, "aud": "flowise", "iss": "flowise", **claims}
    signing_input = f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()  # whatever `alg` says
    return f"{signing_input}.{b64url(signature)}"


def sds_file(path: Path, ui_key: str) -> None:
    """The UI key as README's SDS file, replaced atomically (Envoy follows a file moved into place)."""
    secret = {"resources": [{"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                             "name": "flowise_ui_key", "generic_secret": {"secret": {"inline_string": ui_key}}}]}
    scratch = path.with_suffix(".tmp")
    scratch.write_text(yaml.safe_dump(secret))
    os.replace(scratch, path)


@dataclass
class Gateway:
    """Envoy with the UI key page on, and Flowise's JWT secret (what Flowise would hold)."""

    envoy: Envoy
    secret: str
    ui_key_file: Path
    ui_key: str = ""
    ui_key_id: str = ""


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("ui")
    secret = base64.b64encode(os.urandom(32)).decode()  # as Flowise generates one (generateAuthSecret)
    jwks = subprocess.run([sys.executable, "-c", JWKS_COMMAND], input=secret.encode(), capture_output=True,
                          check=True, timeout=30).stdout
    (work / "flowise-jwks.json").write_bytes(jwks)
    ui_key_file = work / "flowise-ui-key.yaml"
    sds_file(ui_key_file, "fl_not-yet-issued")  # the real UI key comes once keygate runs: a rotation

    def paths(config: dict[str, Any]) -> None:
        for node in mappings(config):
            if "local_jwks" in node:
                node["local_jwks"]["filename"] = str(work / "flowise-jwks.json")
            if "path_config_source" in node:
                node["path_config_source"]["path"] = str(ui_key_file)

    with running_envoy(upstream, paths, ui=True) as envoy:
        yield Gateway(envoy, secret, ui_key_file)


@pytest.fixture(scope="module")
def envoy(gateway: Gateway) -> Envoy:
    """conftest's `mesh` in this module: keygate behind the UI-enabled Envoy."""
    return gateway.envoy


def session_headers(token: str | None, *, refresh: bool = False) -> dict[str, str]:
    """What Flowise's UI sends on its key page (axios `api/client.js`, withCredentials): no key."""
    cookies = [f"token={token}"] if token else []
    cookies += [*(["refreshToken=r.e.f"] if refresh else []), "connect.sid=s%3Ax"]  # Flowise's other cookies
    return {"Content-type": "application/json", "x-request-from": "internal", "Cookie": "; ".join(cookies)}


@pytest.fixture
async def ui(mesh: Mesh, gateway: Gateway) -> AsyncIterator[Gateway]:
    """The gateway with its UI key issued (once per module) and in Envoy's SDS file."""
    if not gateway.ui_key:
        created = await mesh.create(name="flowise ui", permissions=UI_RIGHTS)
        gateway.ui_key, gateway.ui_key_id = created.api_key, created.key.id
        sds_file(gateway.ui_key_file, gateway.ui_key)
        deadline = time.monotonic() + READY_TIMEOUT
        while (await page(mesh, gateway, "GET", API)).status != 200:  # until Envoy follows the file
            assert time.monotonic() < deadline, "Envoy never took the rotated UI key"
            await asyncio.sleep(0.05)
    yield gateway


async def page(mesh: Mesh, gateway: Gateway, method: str, path: str, body: Any = None, *,
               token: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """One call of the UI key page, with a valid session unless `token`/`headers` say otherwise; it must never
    reach the upstream (Flowise)."""
    before = len(mesh.upstream.seen)
    sent = headers if headers is not None else session_headers(token or flowise_jwt(gateway.secret))
    response = await mesh.request(method, path, sent, None if body is None else json.dumps(body).encode())
    assert mesh.upstream.seen[before:] == [], "a key page call reached the upstream"
    return response


async def audit_of(mesh: Mesh, actor: str) -> list[keys_pb2.AuditEvent]:
    request = keys_pb2.ListAuditEventsRequest(actor_key_id=actor, page_size=1000)
    return list((await mesh.keys.ListAuditEvents(request, metadata=mesh.auth())).events)


async def logged_user(mesh: Mesh, request_id: str) -> str | None:
    """The Flowise user Envoy's access log names for a request (its lines are flushed every 20 ms)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        users = {line["request_id"]: line["flowise_user"] for line in mesh.envoy.access_lines()}
        if request_id in users or time.monotonic() > deadline:
            return users.get(request_id)
        await asyncio.sleep(0.02)


# --- the page works -------------------------------------------------------------------------------


async def test_the_ui_four_calls_act_as_the_ui_key(mesh: Mesh, ui: Gateway, keygate_log: io.BytesIO) -> None:
    """The UI's create, list, update, delete with its session: keygate's answers, keygate's audit (actor: the
    UI key), and Envoy's access log naming the Flowise user of each, joined to the audit row by request id."""
    created = await page(mesh, ui, "POST", API, {"keyName": "from the UI", "permissions": ["chatflows:view"]})
    assert created.status == 200, created
    new = created.json()
    assert (new["keyName"], new["permissions"], new["workspaceId"]) == ("from the UI", ["chatflows:view"], "ws1")

    listed = await page(mesh, ui, "GET", f"{API}?page=1&limit=50")
    assert listed.status == 200 and new["id"] in [k["id"] for k in listed.json()["data"]]
    updated = await page(mesh, ui, "PUT", f"{API}/{new['id']}",
                         {"keyName": "renamed", "permissions": ["chatflows:view", "chatflows:update"]})
    assert (updated.status, updated.json()["keyName"]) == (200, "renamed")
    deleted = await page(mesh, ui, "DELETE", f"{API}/{new['id']}")
    assert (deleted.status, deleted.json()) == (200, {"affected": 1})

    events = [e for e in await audit_of(mesh, ui.ui_key_id) if e.target_key_id == new["id"]]
    assert sorted((e.action, e.outcome) for e in events) == [("CreateKey", "OK"), ("DeleteKey", "OK"),
                                                             ("UpdateKey", "OK")]
    assert {await logged_user(mesh, e.request_id) for e in events} == {USER_ID}

    logs.flush()
    logged = keygate_log.getvalue().decode() + mesh.envoy.access_log.read_text() + mesh.envoy.output.read_text()
    answers = created.body + listed.body + updated.body + deleted.body
    leaked = [m for m in secret_material([ui.ui_key]) if m in logged or m in answers.decode()]
    assert not leaked, "the UI key in a log or an answer"
    assert new["apiKey"] not in logged


async def test_the_ui_cannot_escalate_past_the_ui_key(mesh: Mesh, ui: Gateway) -> None:
    message = refused(await page(mesh, ui, "POST", API, {"keyName": "k", "permissions": ["tools:view"]}), 403)
    assert message == "cannot grant 'tools:view': the calling key does not hold it"


# --- sessions that are not valid ----------------------------------------------------------------------


@pytest.mark.parametrize(("token", "message"), [
    (lambda s: flowise_jwt("another secret"), "Jwt verification fails"),
    (lambda s: flowise_jwt(s)[:-4] + "AAAA", "Jwt verification fails"),
    (lambda s: flowise_jwt(s, alg="none"), "Jwt header [alg] is not supported"),
    (lambda s: flowise_jwt(s, exp=int(time.time()) - 120), "Jwt is expired"),
    (lambda s: flowise_jwt(s, nbf=int(time.time()) + 600), "Jwt not yet valid"),
    (lambda s: flowise_jwt(s, aud="elsewhere"), "Audiences in Jwt are not allowed"),
    (lambda s: flowise_jwt(s, iss="elsewhere"), "Jwt issuer is not configured"),
    (lambda s: "not.a.jwt", "Jwt header is an invalid JSON"),
    (lambda s: None, "Jwt is missing"),
], ids=["forged", "tampered", "alg-none", "expired", "not-yet-valid", "audience", "issuer", "garbage", "missing"])
async def test_no_valid_session_is_401_before_keygate(mesh: Mesh, ui: Gateway, token: Any, message: str) -> None:
    before = await audit_of(mesh, ui.ui_key_id)
    for method, path, body in [("GET", API, None), ("POST", API, {"keyName": "k"})]:
        headers = session_headers(token(ui.secret))
        response = await page(mesh, ui, method, path, body, headers=headers)
        assert (response.status, response.json()) == (401, {"code": 401, "message": message}), response
    assert await audit_of(mesh, ui.ui_key_id) == before, "a refused session reached keygate as the UI key"


async def test_an_expired_session_with_a_refresh_cookie_asks_the_ui_to_refresh(mesh: Mesh, ui: Gateway) -> None:
    """As Flowise answers it, so the UI refreshes its session (/api/v1/auth/refreshToken) and retries."""
    expired = flowise_jwt(ui.secret, exp=int(time.time()) - 120)
    response = await page(mesh, ui, "GET", API, headers=session_headers(expired, refresh=True))
    assert (response.status, response.json()) == (401, {"code": 401, "message": "Token Expired", "retry": True})


async def test_without_the_ui_header_a_session_is_no_key(mesh: Mesh, ui: Gateway) -> None:
    """A cookie alone (a cross-site form, a link) is not the UI: keygate's own 401."""
    headers = session_headers(flowise_jwt(ui.secret))
    del headers["x-request-from"]
    assert refused(await page(mesh, ui, "POST", API, {"keyName": "k"}, headers=headers), 401) == (
        "no API key was presented")
    preflight = await mesh.request("OPTIONS", API, {"Origin": "https://elsewhere.example",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "x-request-from"})
    assert not [h for h in preflight.headers if h.startswith("access-control-allow")], preflight


# --- everything else as before --------------------------------------------------------------------------


async def test_a_bearer_caller_uses_its_own_key_even_with_a_session(mesh: Mesh, ui: Gateway) -> None:
    reader = await mesh.create(name="reader", permissions=["chatflows:view", "apikeys:view"])
    headers = {**session_headers(flowise_jwt(ui.secret)), "Authorization": f"Bearer {reader.api_key}"}
    assert "apikeys:create" in refused(await page(mesh, ui, "POST", API, {"keyName": "k"}, headers=headers), 403)
    listed = await page(mesh, ui, "GET", API, headers={**headers, "Cookie": ""})
    assert listed.status == 200
    assert ("CreateKey", "DENIED") in [(e.action, e.outcome) for e in await audit_of(mesh, reader.key.id)]
    bad = {**headers, "Authorization": "Bearer fl_" + "A" * 49}
    assert refused(await page(mesh, ui, "GET", API, headers=bad), 401)


async def test_a_session_call_elsewhere_goes_to_flowise_as_it_came(mesh: Mesh, ui: Gateway) -> None:
    """Elsewhere the UI's session is Flowise's to verify (the routes' `upstream_session`): the call travels
    on with its cookie and marker, with no UI key, no identity and no credential of keygate's."""
    before = len(mesh.upstream.seen)
    response = await mesh.request("GET", "/api/v1/chatflows/f1", session_headers(flowise_jwt(ui.secret)))
    assert response.status == 200
    (seen,) = mesh.upstream.seen[before:]
    headers = dict(seen["headers"])
    assert headers["x-request-from"] == "internal" and "token=" in headers["cookie"]
    assert not {"authorization", "x-api-key", "x-keygate-key-id"} & set(headers)
    assert ui.ui_key not in json.dumps(seen)


async def test_the_ui_key_is_not_in_envoys_config_dump(mesh: Mesh, ui: Gateway) -> None:
    url = f"http://127.0.0.1:{ui.envoy.admin_port}/config_dump?include_eds"
    with urllib.request.urlopen(url, timeout=5) as answer:
        dump = answer.read().decode()
    assert "flowise_ui_key" in dump and ui.ui_key not in dump and ui.secret not in dump


def test_readme_gives_the_commands_these_tests_run() -> None:
    """The JWKS command and the sed that turns the page on, as README and envoy.yaml tell the operator."""
    readme = (ROOT / "README.md").read_text()
    assert JWKS_COMMAND in readme
    sed = "sed -E 's/^( *)#ui /\\1/' deploy/envoy/envoy.yaml"
    assert sed in readme and sed in SHIPPED.read_text()
    assert UI_MARK.pattern == r"^( *)#ui "


async def test_a_request_id_sent_by_the_client_is_not_the_one_audited(mesh: Mesh, ui: Gateway) -> None:
    """The join of audit row and access-log line cannot be forged: Envoy makes the id, whatever came."""
    headers = {**session_headers(flowise_jwt(ui.secret)), "x-request-id": "chosen-by-the-client-0001"}
    created = await page(mesh, ui, "POST", API, {"keyName": "id test", "permissions": ["chatflows:view"]},
                         headers=headers)
    assert created.status == 200, created
    (event,) = [e for e in await audit_of(mesh, ui.ui_key_id) if e.target_key_id == created.json()["id"]]
    assert event.request_id != "chosen-by-the-client-0001"
    assert await logged_user(mesh, event.request_id) == USER_ID
