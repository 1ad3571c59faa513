"""TLS and mTLS on keygate's port, with real handshakes against certificates made here (trustme).

The server reads its files as Kubernetes mounts a cert-manager Secret (symlinks through `..data`) and
follows their rotation without a restart: new connections get the new certificate, open ones carry on.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import trustme

from keygate.config import Settings
from keygate.domain.errors import InvalidArgument
from keygate.server import App
from keygate.v1 import authz_pb2, authz_pb2_grpc

from ..certs import SecretVolume, secure_channel, server_cert
from .support import lines

HANDSHAKE_TIMEOUT = 5.0


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path / "secret")


@asynccontextmanager
async def serving(url: str, volume: SecretVolume, *, mtls: bool) -> AsyncIterator[tuple[App, str]]:
    """keygate with TLS from `volume` (client certificates required if `mtls`), and a root key."""
    settings = Settings(listen="127.0.0.1:0", tls_cert=volume.cert, tls_key=volume.key,
                        tls_client_ca=volume.ca if mtls else None)
    app = await App.start(settings, url)
    try:
        _, root = await app.admin.create_root_key()
        yield app, root
    finally:
        await app.stop(grace=0)


async def decide(channel: grpc.aio.Channel, root: str) -> bool:
    """One AuthzService.Check over `channel`: whether keygate answered (and allowed)."""
    stub = authz_pb2_grpc.AuthzServiceStub(channel)
    answer = await stub.Check(authz_pb2.CheckRequest(api_key=root, action="chatflows:view", workspace_id="ws1"),
                              timeout=HANDSHAKE_TIMEOUT)
    return answer.allowed


async def refused(channel: grpc.aio.Channel, root: str) -> None:
    """The call fails before reaching keygate: the handshake (or the plaintext connection) was refused."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await decide(channel, root)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE, failure.value


async def answers(address: str, root: str, ca: trustme.CA, client: trustme.LeafCert | None = None) -> bool:
    """Whether a new connection trusting `ca` (and presenting `client`) is served."""
    async with secure_channel(address, ca, client) as channel:
        try:
            return await decide(channel, root)
        except grpc.aio.AioRpcError as failure:
            assert failure.code() is grpc.StatusCode.UNAVAILABLE, failure
            return False


async def test_tls_answers_and_plaintext_is_refused(database_url: str, volume: SecretVolume) -> None:
    ca = trustme.CA()
    volume.publish(server_cert(ca), ca)
    async with serving(database_url, volume, mtls=False) as (app, root):
        address = f"localhost:{app.port}"
        assert await answers(address, root, ca)
        assert not await answers(address, root, trustme.CA())  # a client trusting another CA
        async with grpc.aio.insecure_channel(address) as plain:
            await refused(plain, root)


async def test_mtls_requires_a_certificate_from_the_client_ca(database_url: str, volume: SecretVolume,
                                                              tmp_path: Path) -> None:
    ca, other = trustme.CA(), trustme.CA()
    volume.publish(server_cert(ca), ca)
    async with serving(database_url, volume, mtls=True) as (app, root):
        address = f"localhost:{app.port}"
        assert await answers(address, root, ca, ca.issue_cert("envoy.test"))
        assert not await answers(address, root, ca)  # no client certificate
        assert not await answers(address, root, ca, other.issue_cert("envoy.test"))
        async with grpc.aio.insecure_channel(address) as plain:
            await refused(plain, root)


async def test_rotation_reaches_new_connections_and_spares_open_ones(database_url: str, volume: SecretVolume,
                                                                     captured: io.BytesIO) -> None:
    """A new CA for the server's certificate and for clients' (everything cert-manager can rotate)."""
    old, new = trustme.CA(), trustme.CA()
    volume.publish(server_cert(old), old)
    async with serving(database_url, volume, mtls=True) as (app, root):
        address = f"localhost:{app.port}"
        async with secure_channel(address, old, old.issue_cert("envoy.test")) as established:
            assert await decide(established, root)
            volume.publish(server_cert(new), new)
            published = time.perf_counter()
            assert await answers(address, root, new, new.issue_cert("envoy.test"))  # the first connection after
            picked_up = time.perf_counter() - published
            assert not await answers(address, root, old, old.issue_cert("envoy.test"))
            # Its certificate chains to the old CA only: a new handshake would fail, so these calls
            # prove the open connection was kept.
            for _ in range(3):
                assert await decide(established, root)
    reloads = [line for line in lines(captured) if line["event"] == "tls_reloaded"]
    assert len(reloads) == 1, reloads
    print(f"rotation picked up by the first new connection, {picked_up * 1000:.1f} ms after the swap")


async def test_a_broken_rotation_keeps_the_certificate_in_use(database_url: str, volume: SecretVolume,
                                                              captured: io.BytesIO) -> None:
    """A certificate without its key yet (or garbage) is refused once, with a warning; the old pair
    keeps serving; the completed rotation is then picked up."""
    old, new = trustme.CA(), trustme.CA()
    volume.publish(server_cert(old), old)
    async with serving(database_url, volume, mtls=False) as (app, root):
        address = f"localhost:{app.port}"
        leaf = server_cert(new)
        data = volume.root / "..data"
        (data / "tls.crt").write_bytes(leaf.cert_chain_pems[0].bytes())  # the key is still the old one
        for _ in range(3):
            assert await answers(address, root, old)
        (data / "tls.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ntruncat")
        assert await answers(address, root, old)
        (data / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        assert await answers(address, root, new)
    events = lines(captured)
    warnings = [line for line in events if line["event"] == "tls_reload_refused"]
    assert [w["error"] for w in warnings] == [
        f"--tls-key/KEYGATE_TLS_KEY: {volume.key} does not match the certificate in {volume.cert}",
        f"--tls-key/KEYGATE_TLS_KEY: {volume.key} holds no valid PEM private key",
    ]
    assert [line["event"] for line in events].count("tls_reloaded") == 1
    text = captured.getvalue()
    assert "PRIVATE KEY" not in text.decode() and b"truncat" not in text


async def test_concurrent_handshakes_during_a_rotation_all_succeed(database_url: str,
                                                                   volume: SecretVolume) -> None:
    """Handshakes racing a swap see either the old or the new pair, never a mix."""
    old, new = trustme.CA(), trustme.CA()
    volume.publish(server_cert(old), old)
    both = _bundle(old, new)
    async with serving(database_url, volume, mtls=False) as (app, root):
        address = f"localhost:{app.port}"

        async def connect_once() -> bool:
            async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(both),
                                               options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                return await decide(channel, root)

        pending = [asyncio.create_task(connect_once()) for _ in range(20)]
        volume.publish(server_cert(new), new)
        pending += [asyncio.create_task(connect_once()) for _ in range(20)]
        assert all(await asyncio.gather(*pending))


def _bundle(*cas: trustme.CA) -> bytes:
    return b"".join(ca.cert_pem.bytes() for ca in cas)


async def test_settings_name_what_is_wrong(database_url: str, volume: SecretVolume) -> None:
    ca = trustme.CA()
    volume.publish(server_cert(ca), ca)
    settings = Settings(listen="127.0.0.1:0", tls_cert=volume.cert)
    with pytest.raises(InvalidArgument, match=r"^--tls-key/KEYGATE_TLS_KEY: is required with --tls-cert"):
        await App.start(settings, database_url)
    with pytest.raises(InvalidArgument, match="--tls-cert/KEYGATE_TLS_CERT: cannot read"):
        await App.start(replace(settings, tls_cert=volume.root / "missing.crt", tls_key=volume.key), database_url)
