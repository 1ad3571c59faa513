"""The server around the services: health, reflection, the operator's catalog, the listening port."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from keygate.config import Settings
from keygate.domain.errors import KeygateError
from keygate.server import App
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, rpc_error, running

KEY_SERVICE = "keygate.v1.KeyService"
AUTHZ_SERVICE = "keygate.v1.AuthzService"
FLOWISE_KEY_SERVICE = "keygate.v1.FlowiseApiKeyService"


# --- health ----------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", KEY_SERVICE, AUTHZ_SERVICE, FLOWISE_KEY_SERVICE])
async def test_health_answers_serving(client: Client, service: str) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    err = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="keygate.v1.NoSuchService")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --- reflection ------------------------------------------------------------------------


async def reflect(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest,
                  ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_the_services(client: Client) -> None:
    answer = await reflect(client.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in answer.list_services_response.service}
    assert {KEY_SERVICE, AUTHZ_SERVICE, FLOWISE_KEY_SERVICE, "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(("symbol", "methods"), [
    (KEY_SERVICE, {"CreateKey", "GetKey", "ListKeys", "UpdateKey", "DeleteKey", "RotateKey", "BindResource",
                   "UnbindResource", "ListBindings", "ListAuditEvents"}),
    (AUTHZ_SERVICE, {"Check", "BatchCheck", "ListPermissions", "WatchChanges"}),
    (FLOWISE_KEY_SERVICE, {"CreateApiKey", "ListApiKeys", "UpdateApiKey", "DeleteApiKey"}),
])
async def test_reflection_describes_each_service(client: Client, symbol: str, methods: set[str]) -> None:
    """What grpcurl needs to call a method without the .proto files."""
    answer = await reflect(client.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in answer.file_descriptor_response.file_descriptor_proto]
    described = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in files for s in f.service}
    assert described[symbol] == methods


# --- the operator's catalog ------------------------------------------------------------


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text("categories: {billing: [view, charge]}\n")
    return path


async def test_operator_catalog_adds_permissions_with_implication(database_url: str, catalog_file: Path) -> None:
    settings = Settings(listen="127.0.0.1:0", catalog_file=catalog_file)
    async with running(settings, database_url) as (_, client):
        created = await client.create(permissions=["billing:charge"])
        charge = await client.check(created.api_key, "billing/invoice-1", "billing:charge")
        view = await client.check(created.api_key, "billing/invoice-1", "billing:view")
        other = await client.check(created.api_key, "chatflows/a", "chatflows:view")
        refund = await rpc_error(client.check(created.api_key, "billing/invoice-1", "billing:refund"))
        grant_refund = await rpc_error(client.create(permissions=["billing:refund"]))

    assert (charge.allowed, charge.code) == (True, authz_pb2.OK)
    assert (view.allowed, view.code) == (True, authz_pb2.OK)  # any verb implies view
    assert (other.allowed, other.code) == (False, authz_pb2.PERMISSION_DENIED)
    assert refund.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "billing:refund" in field_violations(refund)["action"]
    assert grant_refund.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "billing:refund" in field_violations(grant_refund)["permissions[0]"]


async def test_operator_catalog_category_wildcard_and_builtins_still_there(
    database_url: str, catalog_file: Path
) -> None:
    settings = Settings(listen="127.0.0.1:0", catalog_file=catalog_file)
    async with running(settings, database_url) as (_, client):
        created = await client.create(permissions=["billing:*", "chatflows:view"])
        decisions = [await client.check(created.api_key, "", action)
                     for action in ("billing:charge", "billing:view", "chatflows:view")]
    assert [d.allowed for d in decisions] == [True, True, True]


async def test_without_the_catalog_file_the_category_is_unknown(client: Client) -> None:
    """The extension comes from the file: the default server refuses the same permission."""
    err = await rpc_error(client.create(permissions=["billing:charge"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "billing:charge" in field_violations(err)["permissions[0]"]


MALFORMED_CATALOGS = {
    "not YAML": ("categories: {billing: [view", "cannot read"),
    "categories is a list": ("categories: [billing]", "categories"),
    "verbs not a list": ("categories: {billing: view}", "categories"),
    "verb not a string": ("categories: {billing: [1]}", "categories"),
    "no categories key": ("billing: [view]", "categories"),
    "empty file": ("", "categories"),
    "bad category name": ("categories: {'bill ing': [view]}", "bill ing"),
    "bad verb name": ("categories: {billing: ['char ge']}", "char ge"),
    "category starting with a digit": ("categories: {1billing: [view]}", "1billing"),
}


@pytest.mark.parametrize(("text", "mentions"), list(MALFORMED_CATALOGS.values()), ids=list(MALFORMED_CATALOGS))
def test_malformed_catalog_file_is_a_clear_error(tmp_path: Path, text: str, mentions: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(KeygateError) as info:
        Settings(catalog_file=path).catalog()
    assert mentions in info.value.message
    assert "catalog" in info.value.message


def test_missing_catalog_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(KeygateError) as info:
        Settings(catalog_file=path).catalog()
    assert str(path) in info.value.message


async def test_app_does_not_start_with_a_malformed_catalog(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("categories: {billing: view}")
    with pytest.raises(KeygateError, match="categories"):
        await App.start(Settings(listen="127.0.0.1:0", catalog_file=path), database_url)


def test_serve_with_a_malformed_catalog_exits_with_one_line(database_url: str, tmp_path: Path) -> None:
    """What the operator sees: `keygate: KEYGATE_CATALOG (--catalog): ...` on stderr and exit status 1, no traceback."""
    path = tmp_path / "catalog.yaml"
    path.write_text("categories: [billing]")
    done = subprocess.run(
        [sys.executable, "-c", "from keygate.cli import main; main()", "serve", "--database-url", database_url,
         "--listen", "127.0.0.1:0"],
        env={**os.environ, "KEYGATE_CATALOG": str(path), "KEYGATE_METRICS": "off"},  # whatever holds :9464
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("keygate: KEYGATE_CATALOG (--catalog): ") and str(path) in last
    assert "Traceback" not in done.stderr


# --- the listening port ----------------------------------------------------------------


async def backends(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await conn.close()


async def test_second_app_on_a_taken_port_fails_clearly(app: App, database_url: str) -> None:
    taken = f"127.0.0.1:{app.port}"
    connections = await backends(database_url)

    with pytest.raises(SystemExit) as info:
        await App.start(Settings(listen=taken), database_url)

    assert f"cannot listen on {taken}" in str(info.value.code)
    # The first server still answers, and the failed start left no database connections behind.
    async with grpc.aio.insecure_channel(taken) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for _ in range(100):
        if await backends(database_url) <= connections:
            break
        await asyncio.sleep(0.02)
    assert await backends(database_url) <= connections


async def test_port_taken_by_another_program_fails_clearly(database_url: str) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(SystemExit, match=f"cannot listen on {taken}"):
            await App.start(Settings(listen=taken), database_url)


async def test_fixed_free_port_is_used(database_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with running(Settings(listen=f"127.0.0.1:{port}"), database_url) as (app, client):
        assert app.port == port
        answer = await client.check(client.root, "", "chatflows:view")
    assert answer.allowed


async def test_operator_categories_act_on_the_collections_they_declare(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("categories:\n  billing: [view]\n  invoices: {verbs: [send], collections: [billing]}\n")
    async with running(Settings(listen="127.0.0.1:0", catalog_file=path), database_url) as (_, client):
        created = await client.create(permissions=["invoices:send"], resources=["Billing/acct-1"])
        send = await client.check(created.api_key, "BILLING/acct-1", "invoices:send")
        not_a_collection = await rpc_error(client.check(created.api_key, "invoices/x", "invoices:send"))
        scoped = (await client.keys.GetKey(keys_pb2.GetKeyRequest(id=created.key.id), metadata=auth(client.root)))

    assert (send.allowed, send.code) == (True, authz_pb2.OK)
    assert "unknown collection" in field_violations(not_a_collection)["resource"]
    assert list(scoped.resources) == ["billing/acct-1"]  # stored in the catalog's spelling
