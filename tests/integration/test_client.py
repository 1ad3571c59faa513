"""keygate.client against a real keygate: Authorizer and SyncAuthorizer answer typed Decisions, and fail
closed (KeygateUnavailable within the deadline, never an allowed Decision) when keygate cannot be reached."""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import trustme
from google.protobuf import duration_pb2

from keygate.client import (
    Authorizer,
    CheckItem,
    ClientSettings,
    Decision,
    DecisionCode,
    KeygateRequestError,
    KeygateUnavailable,
    Retry,
    SyncAuthorizer,
)
from keygate.config import Settings
from keygate.server import App
from keygate.v1 import keys_pb2

from ..certs import SecretVolume, server_cert, write
from .processes import free_port
from .support import Client


def settings_of(app: App) -> ClientSettings:
    return ClientSettings.from_env({"KEYGATE_SERVER": f"127.0.0.1:{app.port}"})


async def test_check_answers_typed_decisions(app: App, client: Client) -> None:
    created = await client.create(name="svc", permissions=["chatflows:view"], workspace_id="ws1")
    async with Authorizer(settings_of(app)) as authz:
        allowed = await authz.check(created.api_key, "chatflows/a", "chatflows:view", workspace_id="ws1")
        denied = await authz.check(created.api_key, "chatflows/a", "chatflows:delete")
        unknown = await authz.check("kg_" + "x" * 49, "chatflows/a", "chatflows:view")
        many = await authz.check_many(created.api_key, [("chatflows/a", "chatflows:view"),
                                                        CheckItem("chatflows/b", "chatflows:update", "ws1")])
        with pytest.raises(KeygateRequestError) as bad:
            await authz.check(created.api_key, "chatflows/a", "no such action")
    assert allowed == Decision(True, DecisionCode.OK, allowed.reason, 200, created.key.id, "svc", "ws1")
    assert (denied.allowed, denied.code, denied.http_status) == (False, DecisionCode.PERMISSION_DENIED, 403)
    assert (unknown.allowed, unknown.code, unknown.http_status, unknown.key_id) == (
        False, DecisionCode.KEY_NOT_FOUND, 401, "")
    assert [(d.allowed, d.code) for d in many] == [(True, DecisionCode.OK), (False, DecisionCode.PERMISSION_DENIED)]
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT and created.api_key not in str(bad.value)


async def test_sync_authorizer_answers_the_same(app: App, client: Client) -> None:
    created = await client.create(permissions=["chatflows:view"])

    def ask() -> list[Decision]:
        with SyncAuthorizer(settings_of(app)) as authz:
            return [authz.check(created.api_key, "chatflows/a", "chatflows:view"),
                    *authz.check_many(created.api_key, [("chatflows/a", "chatflows:delete")])]

    allowed, denied = await asyncio.to_thread(ask)  # keygate runs on this loop: it must stay free
    assert (allowed.allowed, allowed.code, denied.allowed, denied.code) == (
        True, DecisionCode.OK, False, DecisionCode.PERMISSION_DENIED)


DOWN = ClientSettings(server=f"127.0.0.1:{free_port()}", timeout=2.0, retry=Retry(attempts=3, base=0.05, cap=0.1))


async def test_unreachable_keygate_raises_unavailable_after_bounded_retries() -> None:
    async with Authorizer(DOWN) as authz:
        started = time.monotonic()
        with pytest.raises(KeygateUnavailable) as failed:
            await authz.check("kg_" + "x" * 49, "chatflows/a", "chatflows:view")
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE and "3 attempt(s)" in str(failed.value)
    assert time.monotonic() - started < DOWN.timeout
    assert "x" * 43 not in str(failed.value)


def test_sync_unreachable_keygate_raises_unavailable_within_the_deadline() -> None:
    settings = ClientSettings(server=DOWN.server, timeout=0.3, retry=Retry(attempts=100, base=0.05, cap=0.1))
    with SyncAuthorizer(settings) as authz:
        started = time.monotonic()
        with pytest.raises(KeygateUnavailable):
            authz.check_many("kg_" + "x" * 49, [("chatflows/a", "chatflows:view")])
    assert time.monotonic() - started < settings.timeout + 0.2  # the deadline bounds the retries, not `attempts`


async def test_a_stopped_keygate_fails_closed(app: App, client: Client) -> None:
    created = await client.create(permissions=["chatflows:view"])
    async with Authorizer(settings_of(app)) as authz:
        assert (await authz.check(created.api_key, "chatflows/a", "chatflows:view")).allowed
        await app.stop(grace=0)
        with pytest.raises(KeygateUnavailable):
            await authz.check(created.api_key, "chatflows/a", "chatflows:view")


async def test_mtls_settings_from_the_cli_environment(database_url: str, tmp_path: Path) -> None:
    """KEYGATE_TLS_CA, KEYGATE_TLS_CLIENT_CERT/KEY: the variables `keygate check` reads, read the same way."""
    ca, volume = trustme.CA(), SecretVolume(tmp_path / "secret")
    volume.publish(server_cert(ca), ca)
    cert, key = write(tmp_path, "service", ca.issue_cert("service.test"))
    app = await App.start(Settings(listen="127.0.0.1:0", tls_cert=volume.cert, tls_key=volume.key,
                                   tls_client_ca=volume.ca), database_url)
    try:
        _, root = await app.admin.create_root_key()
        env = {"KEYGATE_SERVER": f"localhost:{app.port}", "KEYGATE_TLS_CA": str(volume.ca)}
        async with Authorizer.from_env({**env, "KEYGATE_TLS_CLIENT_CERT": str(cert),
                                        "KEYGATE_TLS_CLIENT_KEY": str(key)}) as authz:
            assert (await authz.check(root, "", "chatflows:view", workspace_id="ws1")).allowed
        async with Authorizer.from_env(env) as without_certificate:
            with pytest.raises(KeygateUnavailable):  # the handshake is refused: no answer, no decision
                await without_certificate.check(root, "", "chatflows:view", workspace_id="ws1")
    finally:
        await app.stop(grace=0)


async def test_limits_and_allow_lists_reach_the_client(app: App, client: Client) -> None:
    """A key with a rate limit, credits and an IP allow-list: the Decision carries the limit state, `cost`
    spends it, and the client address decides."""
    created = await client.create(
        rate_limits=[keys_pb2.RateLimit(name="minute", limit=10, window=duration_pb2.Duration(seconds=60))],
        credits=keys_pb2.Credits(remaining=5), allowed_cidrs=["10.0.0.0/8"])
    async with Authorizer(settings_of(app)) as authz:
        first = await authz.check(created.api_key, "chatflows/a", "chatflows:view", client_address="10.1.2.3",
                                  cost=2)
        outside = await authz.check(created.api_key, "chatflows/a", "chatflows:view", client_address="192.0.2.1")
        many = await authz.check_many(created.api_key, [CheckItem("chatflows/a", "chatflows:view", cost=3)],
                                      client_address="10.1.2.3")
        spent = await authz.check(created.api_key, "chatflows/a", "chatflows:view", client_address="10.1.2.3")
    assert first.allowed and first.rate_limit is not None and first.credits_remaining == 3
    # rate limits count requests (one each, whatever the cost); credits count the cost
    assert (first.rate_limit.name, first.rate_limit.limit, first.rate_limit.remaining) == ("minute", 10, 9)
    assert first.rate_limit.window == timedelta(seconds=60) and first.rate_limit.reset_time is not None
    assert (outside.allowed, outside.code, outside.rate_limit) == (False, DecisionCode.IP_NOT_ALLOWED, None)
    assert [(d.allowed, d.credits_remaining) for d in many] == [(True, 0)]
    assert (spent.allowed, spent.code, spent.http_status) == (False, DecisionCode.USAGE_EXCEEDED, 429)


async def test_calls_a_draining_keygate_cancels_are_retried_not_refused(app: App, client: Client) -> None:
    """A client that keeps its connection busy through a keygate's drain (a gRPC client behind a ClusterIP
    Service in a rolling update) has calls queued inside grpc when the drain stops serving; grpc answers
    them CANCELLED, before keygate saw them. They are retried like UNAVAILABLE: never a KeygateRequestError,
    which callers read as their own bug (the interceptor answers INTERNAL)."""
    created = await client.create(permissions=["chatflows:view"])
    outcomes: collections.Counter[str] = collections.Counter()
    stopping = asyncio.Event()

    async def loop(authz: Authorizer) -> None:
        while not stopping.is_set():
            try:
                outcomes[(await authz.check(created.api_key, "chatflows/a", "chatflows:view")).code.name] += 1
            except KeygateUnavailable:
                outcomes["KeygateUnavailable"] += 1
                return
            except KeygateRequestError as error:
                outcomes[f"KeygateRequestError {error.code.name}"] += 1
                return

    async with Authorizer(settings_of(app)) as authz:
        loops = [asyncio.create_task(loop(authz)) for _ in range(200)]
        while outcomes["OK"] < 200:
            await asyncio.sleep(0.01)
        await app.stop(grace=1.5)  # the load never pauses: the drain stops serving with calls queued
        stopping.set()
        await asyncio.gather(*loops)
    assert set(outcomes) <= {"OK", "KeygateUnavailable"}, outcomes
