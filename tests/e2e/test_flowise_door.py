"""Flowise's `/api/v1/apikey` through a real Envoy (the shipped deploy/envoy/envoy.yaml): the four calls of
Flowise's UI client (packages/ui/src/api/apikey.js, headers from its api/client.js) answered by keygate
through the gRPC-JSON transcoder, never by the upstream; errors as HTTP statuses with a JSON `message`.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from keygate import logs
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2

from .conftest import Mesh, Response

API = "/api/v1/apikey"
ADMIN = ["apikeys:*", "chatflows:view"]
SECRET_SLICE = 20  # no run of this many characters of a key's secret may appear in a log


def client_headers(key: str | None) -> dict[str, str]:
    """What Flowise's UI client sends (axios, `api/client.js`), with a keygate key as the Bearer token."""
    headers = {"Content-type": "application/json", "x-request-from": "internal"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def call(mesh: Mesh, method: str, path: str, key: str | None, body: Any = None) -> Response:
    """One of the seed calls; it must never reach the upstream."""
    before = len(mesh.upstream.seen)
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    response = await mesh.request(method, path, client_headers(key), raw)
    assert mesh.upstream.seen[before:] == [], "a key call reached the upstream"
    return response


def refused(response: Response, status: int) -> str:
    """An error as a Flowise client reads it: the status, and `error.response.data.message`."""
    assert (response.status, response.headers.get("content-type")) == (status, "application/json"), response
    message = response.json()["message"]
    assert isinstance(message, str) and message
    return message


@pytest.fixture
def keygate_log() -> Iterator[io.BytesIO]:
    """keygate's log lines, every call's (access log policy `all`)."""
    stream = io.BytesIO()
    logs.configure(stream=stream, access="all")
    try:
        yield stream
    finally:
        logs.configure()


async def admin_key(mesh: Mesh, workspace: str = "ws1") -> str:
    return (await mesh.create(name="door admin", permissions=ADMIN, workspace_id=workspace)).api_key


async def check(mesh: Mesh, key: str, action: str = "chatflows:view",
                resource: str = "chatflows/f1") -> authz_pb2.CheckResponse:
    stub = authz_pb2_grpc.AuthzServiceStub(mesh.channel)
    return await stub.Check(authz_pb2.CheckRequest(api_key=key, resource=resource, action=action,
                                                   workspace_id="ws1"))


async def audited(mesh: Mesh, key_id: str) -> list[tuple[str, str]]:
    page = await mesh.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(key_id=key_id), metadata=mesh.auth())
    return sorted((e.action, e.outcome) for e in page.events)


def secret_material(keys: list[str]) -> list[str]:
    """Every key, and every SECRET_SLICE-character run of each key's secret part."""
    out = []
    for key in keys:
        secret = key.partition("_")[2]
        out += [key, *(secret[i:i + SECRET_SLICE] for i in range(len(secret) - SECRET_SLICE + 1))]
    return out


# --- the four calls -----------------------------------------------------------------------------


async def test_the_four_seed_calls(mesh: Mesh, keygate_log: io.BytesIO) -> None:
    """create -> the key, once, which then works; list masked; update; delete; the audit trail of each."""
    admin = await admin_key(mesh)

    created = await call(mesh, "POST", API, admin, {"keyName": "Production Backend Service"})
    assert created.status == 200, created
    new = created.json()
    assert set(new) == {"id", "keyName", "apiKey", "permissions", "workspaceId", "createdAt", "updatedDate",
                        "chatFlows"}
    assert (new["keyName"], new["permissions"], new["workspaceId"]) == ("Production Backend Service", ADMIN, "ws1")
    assert (await check(mesh, new["apiKey"])).allowed
    flowise_route = await mesh.request("GET", "/api/v1/chatflows/f1", {"Authorization": f"Bearer {new['apiKey']}"})
    assert flowise_route.status == 200 and new["apiKey"] not in flowise_route.body.decode()

    listed = await call(mesh, "GET", API, admin)
    assert listed.status == 200 and isinstance(listed.json(), list)
    (shown,) = [k for k in listed.json() if k["id"] == new["id"]]
    assert shown["apiKey"] == f"{new['apiKey'][:7]}...{new['apiKey'][-4:]}"
    assert new["apiKey"] not in listed.body.decode() and admin not in listed.body.decode()
    page = (await call(mesh, "GET", f"{API}?page=1&limit=1&type=organization", admin)).json()  # `type`: ignored
    assert (page["total"], [k["id"] for k in page["data"]]) == (len(listed.json()), [listed.json()[0]["id"]])

    updated = await call(mesh, "PUT", f"{API}/{new['id']}", admin,
                         {"keyName": "renamed", "permissions": ["chatflows:view"]})
    assert (updated.status, updated.json()["keyName"], updated.json()["permissions"]) == (
        200, "renamed", ["chatflows:view"])
    assert (await check(mesh, admin, "apikeys:view", "")).allowed
    assert not (await check(mesh, new["apiKey"], "apikeys:view", "")).allowed

    deleted = await call(mesh, "DELETE", f"{API}/{new['id']}", admin)
    assert (deleted.status, deleted.json()) == (200, {"affected": 1})
    assert (await check(mesh, new["apiKey"])).code == authz_pb2.KEY_NOT_FOUND

    assert await audited(mesh, new["id"]) == [("CreateKey", "OK"), ("DeleteKey", "OK"), ("UpdateKey", "OK")]
    logs.flush()
    logged = keygate_log.getvalue().decode() + mesh.envoy.access_log.read_text() + mesh.envoy.output.read_text()
    assert "/keygate.v1.FlowiseApiKeyService/CreateApiKey" in logged
    assert not [m for m in secret_material([admin, new["apiKey"]]) if m in logged], "key material in a log"


async def test_permissions_are_kept_as_sent(mesh: Mesh) -> None:
    created = await call(mesh, "POST", API, await admin_key(mesh),
                         {"keyName": "ui", "permissions": ["chatflows:view", "apikeys:view"]})
    assert (created.status, created.json()["permissions"]) == (200, ["chatflows:view", "apikeys:view"])


# --- errors, as Flowise's UI reads them -------------------------------------------------------------


async def test_unknown_id_is_404(mesh: Mesh) -> None:
    admin = await admin_key(mesh)
    missing = str(uuid.uuid4())
    assert missing in refused(await call(mesh, "DELETE", f"{API}/{missing}", admin), 404)
    update = {"keyName": "n", "permissions": ["chatflows:view"]}
    refused(await call(mesh, "PUT", f"{API}/{missing}", admin, update), 404)


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", API, {"keyName": ""}, "keyName"),
    ("POST", API, {"keyName": "k", "permissions": ["chatflows:fly"]}, "permissions[0]"),
    ("POST", API, {"keyName": 5}, "key_name"),  # the transcoder's own refusal: it names the proto field
    ("PUT", f"{API}/{{mine}}", {"keyName": "k"}, "permissions"),
    ("DELETE", f"{API}/not-a-uuid", None, "id"),
    ("GET", f"{API}?page=-1&limit=5", None, "page"),
    ("GET", f"{API}?page=x", None, "page"),
])
async def test_bad_input_is_400_naming_the_field(mesh: Mesh, method: str, path: str, body: Any,
                                                 field: str) -> None:
    admin = await mesh.create(name="door admin", permissions=ADMIN)
    message = refused(await call(mesh, method, path.format(mine=admin.key.id), admin.api_key, body), 400)
    assert message.startswith(f"{field}: "), message


async def test_a_body_that_is_not_json_is_400(mesh: Mesh) -> None:
    refused(await call(mesh, "POST", API, await admin_key(mesh), b"{keyName"), 400)


@pytest.mark.parametrize("key", [None, "fl_" + "A" * 49, "not-a-keygate-key"])
async def test_no_working_key_is_401(mesh: Mesh, key: str | None) -> None:
    refused(await call(mesh, "POST", API, key, {"keyName": "k"}), 401)
    refused(await call(mesh, "GET", API, key), 401)


async def test_a_key_without_the_permission_is_403(mesh: Mesh) -> None:
    reader = await mesh.create(name="reader", permissions=["chatflows:view", "apikeys:view"])
    message = refused(await call(mesh, "POST", API, reader.api_key, {"keyName": "k"}), 403)
    assert "apikeys:create" in message
    viewer = await mesh.create(name="viewer", permissions=["chatflows:view"])
    # Envoy resolves `..` before routing: this is the key API's list, which needs apikeys:view.
    message = refused(await call(mesh, "GET", "/api/v1/chatflows/abc/../../apikey", viewer.api_key), 403)
    assert "apikeys:view" in message
    assert ("CreateKey", "DENIED") in [(e.action, e.outcome) for e in (await mesh.keys.ListAuditEvents(
        keys_pb2.ListAuditEventsRequest(actor_key_id=reader.key.id), metadata=mesh.auth())).events]


async def test_escalation_is_403(mesh: Mesh) -> None:
    admin = await admin_key(mesh)
    message = refused(await call(mesh, "POST", API, admin, {"keyName": "k", "permissions": ["tools:*"]}), 403)
    assert message == "cannot grant 'tools:*': the calling key does not hold it"
    mine = (await call(mesh, "POST", API, admin, {"keyName": "mine", "permissions": ["chatflows:view"]})).json()
    widen = {"keyName": "mine", "permissions": ["chatflows:view", "chatflows:update"]}
    refused(await call(mesh, "PUT", f"{API}/{mine['id']}", admin, widen), 403)


@pytest.mark.parametrize(("method", "path"), [
    ("PATCH", f"{API}/{uuid.uuid4()}"), ("GET", f"{API}/{uuid.uuid4()}"), ("PUT", API), ("DELETE", API),
])
async def test_other_calls_on_the_path_are_404(mesh: Mesh, method: str, path: str) -> None:
    refused(await call(mesh, method, path, await admin_key(mesh), {}), 404)


async def test_keygate_unreachable_is_503(mesh: Mesh) -> None:
    admin = await admin_key(mesh)
    await mesh.stop()
    refused(await call(mesh, "GET", API, admin), 503)


async def test_neighbouring_paths_stay_flowise_routes(mesh: Mesh) -> None:
    """/api/v1/apikeys is not the key API: it goes through ext_authz like any Flowise route."""
    response = await mesh.request("GET", "/api/v1/apikeys", client_headers(await admin_key(mesh)))
    assert (response.status, response.json()["code"]) == (403, "NO_MATCHING_ROUTE")
