"""`keygate serve` with TLS as an operator runs it (flags, environment, `--workers`), the CLI's TLS options,
and the start-up messages: one line for a bad setting, one warning for plaintext off loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
import trustme

from keygate.v1 import authz_pb2, authz_pb2_grpc

from ..certs import SecretVolume, secure_channel, server_cert, write
from .processes import bootstrap, free_port, start, stop
from .test_startup import keygate

CONNECTIONS = 20  # new connections per step: SO_REUSEPORT hashes them over both workers (all on one: 2e-6)


def events(logs: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in logs.splitlines():
        if line.startswith("{") and (entry := json.loads(line))["event"] == name:
            found.append(entry)
    return found


async def served_connections(address: str, root: str, ca: trustme.CA, client: trustme.LeafCert) -> int:
    """How many of CONNECTIONS new connections trusting `ca` and presenting `client` get an answer."""

    async def one() -> bool:
        async with secure_channel(address, ca, client) as channel:
            try:
                await authz_pb2_grpc.AuthzServiceStub(channel).Check(
                    authz_pb2.CheckRequest(api_key=root, action="chatflows:view"), timeout=5)
            except grpc.aio.AioRpcError as failure:
                assert failure.code() is grpc.StatusCode.UNAVAILABLE, failure
                return False
            return True

    return sum(await asyncio.gather(*(one() for _ in range(CONNECTIONS))))


async def test_workers_serve_mtls_off_loopback_follow_a_rotation_and_the_cli_connects(
        database_url: str, tmp_path: Path) -> None:
    old, new = trustme.CA(), trustme.CA()
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(server_cert(old), old)
    root = bootstrap(database_url)
    port = free_port()
    served = start("--database-url", database_url, "--workers", "2", "--listen", f"0.0.0.0:{port}",
                   env={"KEYGATE_TLS_CERT": str(volume.cert), "KEYGATE_TLS_KEY": str(volume.key),
                        "KEYGATE_TLS_CLIENT_CA": str(volume.ca)})
    address = f"localhost:{port}"
    try:
        assert f"listening on 0.0.0.0:{port} with mTLS" in served.banner and "2 worker processes" in served.banner
        client = old.issue_cert("cli.test")
        ca_file = tmp_path / "ca.crt"
        old.cert_pem.write_to_path(str(ca_file))
        cert, key = write(tmp_path, "cli", client)
        tls_env = {"KEYGATE_SERVER": address, "KEYGATE_TLS_CA": str(ca_file),
                   "KEYGATE_TLS_CLIENT_CERT": str(cert), "KEYGATE_TLS_CLIENT_KEY": str(key)}
        checked = keygate("check", "--action", "chatflows:view", KEYGATE_API_KEY=root, **tls_env)
        assert (checked.returncode, checked.stderr) == (0, ""), checked
        listed = keygate("keys", "list", "--server", address, "--tls-ca", str(ca_file), "--tls-client-cert",
                         str(cert), "--tls-client-key", str(key), KEYGATE_API_KEY=root)
        assert listed.returncode == 0 and "root" in listed.stdout, listed
        anonymous = keygate("check", "--action", "chatflows:view", KEYGATE_API_KEY=root, KEYGATE_SERVER=address,
                            KEYGATE_TLS_CA=str(ca_file))
        assert anonymous.returncode == 2 and f"cannot reach keygate at {address}" in anonymous.stderr, anonymous

        assert await served_connections(address, root, old, client) == CONNECTIONS
        volume.publish(server_cert(new), new)
        assert await served_connections(address, root, new, new.issue_cert("cli.test")) == CONNECTIONS
        assert await served_connections(address, root, old, client) == 0
    finally:
        logs = stop(served)
    assert len(events(logs, "tls_reloaded")) == 2, logs  # each worker, on its first handshake after the swap
    assert not events(logs, "listening_without_tls")
    assert "Handshake failed" not in logs


def test_plaintext_off_loopback_warns_once_and_loopback_does_not(database_url: str) -> None:
    port = free_port()
    exposed = start("--database-url", database_url, "--workers", "2", "--listen", f"0.0.0.0:{port}")
    warnings = events(stop(exposed), "listening_without_tls")
    assert [w["listen"] for w in warnings] == [f"0.0.0.0:{port}"]
    assert "--tls-cert/KEYGATE_TLS_CERT" in str(warnings[0]["hint"])
    assert not events(stop(start("--database-url", database_url, "--workers", "1")), "listening_without_tls")


def test_the_cli_without_a_ca_trusts_grpcs_default_roots(database_url: str, tmp_path: Path) -> None:
    """`--tls` alone: the roots file in GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else the bundle grpcio ships."""
    ca = trustme.CA()
    cert, key = write(tmp_path, "server", server_cert(ca))
    ca_file = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        def check(*flags: str, **env: str) -> int:
            return keygate("check", "--action", "chatflows:view", "--server", served.address, *flags,
                           KEYGATE_API_KEY=root, **env).returncode

        assert check("--tls", GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca_file)) == 0
        assert check(KEYGATE_TLS="on", GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca_file)) == 0
        assert check("--tls", GRPC_DEFAULT_SSL_ROOTS_FILE_PATH="") == 2  # grpcio's bundle: not our test CA
        assert check() == 2  # plaintext against a TLS port
        assert check("--tls-ca", str(ca_file), "--tls-server-name", "keygate.test") == 0
        assert check("--tls-ca", str(ca_file), "--tls-server-name", "elsewhere.test") == 2
    finally:
        stop(served)


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert, key = write(tmp_path, "server", server_cert(ca))
    _, other_key = write(tmp_path, "other", server_cert(ca))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return {"cert": cert, "key": key, "other_key": other_key, "garbage": garbage, "missing": tmp_path / "none.pem"}


SERVE_ERRORS = [
    (("--tls-cert", "{cert}"), "--tls-key/KEYGATE_TLS_KEY: is required with --tls-cert/KEYGATE_TLS_CERT"),
    (("--tls-key", "{key}"), "--tls-cert/KEYGATE_TLS_CERT: is required with --tls-key/KEYGATE_TLS_KEY"),
    (("--tls-client-ca", "{cert}"),
     "--tls-client-ca/KEYGATE_TLS_CLIENT_CA: needs --tls-cert/KEYGATE_TLS_CERT and --tls-key/KEYGATE_TLS_KEY as well"),
    (("--tls-cert", "{missing}", "--tls-key", "{key}"),
     "--tls-cert/KEYGATE_TLS_CERT: cannot read {missing}: No such file or directory"),
    (("--tls-cert", "{garbage}", "--tls-key", "{key}"),
     "--tls-cert/KEYGATE_TLS_CERT: {garbage} holds no valid PEM certificate"),
    (("--tls-cert", "{cert}", "--tls-key", "{other_key}"),
     "--tls-key/KEYGATE_TLS_KEY: {other_key} does not match the certificate in {cert}"),
    (("--tls-cert", "{cert}", "--tls-key", "{cert}"),
     "--tls-key/KEYGATE_TLS_KEY: {cert} holds no valid PEM private key"),
    (("--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{garbage}"),
     "--tls-client-ca/KEYGATE_TLS_CLIENT_CA: {garbage} holds no valid PEM certificate"),
]


@pytest.mark.parametrize(("flags", "message"), SERVE_ERRORS)
def test_a_bad_tls_setting_is_one_line_naming_it(flags: tuple[str, ...], message: str, pems: dict[str, Path],
                                                 database_url: str) -> None:
    done = keygate("serve", "--listen", "127.0.0.1:0", "--database-url", database_url,
                   *(flag.format(**pems) for flag in flags))
    assert (done.returncode, done.stderr) == (1, f"keygate: {message.format(**pems)}\n")


def test_the_environment_is_named_too_and_the_cli_fails_the_same_way(pems: dict[str, Path]) -> None:
    done = keygate("serve", "--listen", "127.0.0.1:0", KEYGATE_TLS_CERT=str(pems["missing"]),
                   KEYGATE_TLS_KEY=str(pems["key"]))
    assert (done.returncode, done.stderr) == (
        1, f"keygate: --tls-cert/KEYGATE_TLS_CERT: cannot read {pems['missing']}: No such file or directory\n")
    cli = {"KEYGATE_SERVER": "127.0.0.1:1", "KEYGATE_API_KEY": "unused"}
    half = keygate("check", "--action", "chatflows:view", "--tls-client-cert", str(pems["cert"]), **cli)
    assert (half.returncode, half.stderr) == (2, "keygate check: error: --tls-client-key/KEYGATE_TLS_CLIENT_KEY: "
                                                 "is required with --tls-client-cert/KEYGATE_TLS_CLIENT_CERT\n")
    garbage = keygate("keys", "list", KEYGATE_TLS_CA=str(pems["garbage"]), **cli)
    assert (garbage.returncode, garbage.stderr) == (
        1, f"keygate keys list: error: --tls-ca/KEYGATE_TLS_CA: {pems['garbage']} holds no valid PEM certificate\n")
    switch = keygate("keys", "list", KEYGATE_TLS="yes", **cli)
    assert switch.returncode == 1 and "--tls/KEYGATE_TLS: must be on or off, not 'yes'" in switch.stderr

