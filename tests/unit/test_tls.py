"""The TLS settings' rules: which addresses count as loopback, how client options combine, and the
reloader's bookkeeping between handshakes (the handshakes themselves: tests/integration/test_tls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from keygate.domain.errors import InvalidArgument
from keygate.tls import ClientTLS, ServerFiles, _Reloader, is_loopback


@pytest.mark.parametrize(("listen", "loopback"), [
    ("127.0.0.1:50051", True), ("127.9.9.9:1", True), ("localhost:50051", True), ("[::1]:50051", True),
    ("unix:/run/keygate.sock", True), ("0.0.0.0:50051", False), ("[::]:50051", False), (":50051", False),
    ("10.0.0.7:50051", False), ("keygate.internal:50051", False),
])
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_client_tls_is_off_until_asked_for() -> None:
    assert ClientTLS.from_env({}) == ClientTLS(enabled=False)
    assert ClientTLS.from_env({"KEYGATE_TLS": "on"}).enabled
    assert ClientTLS.from_env({}, enabled=True).enabled
    assert ClientTLS.from_env({"KEYGATE_TLS_CA": "/ca.pem"}) == ClientTLS(enabled=True, ca=Path("/ca.pem"))


def test_client_tls_built_in_code_follows_the_same_rule() -> None:
    """A CA or a client certificate turns TLS on, and paths may be strs, as the README's example reads."""
    assert ClientTLS(ca="/ca.pem") == ClientTLS(enabled=True, ca=Path("/ca.pem"))  # type: ignore[arg-type]
    assert ClientTLS(cert=Path("/c.crt"), key=Path("/c.key")).enabled
    assert not ClientTLS(server_name="keygate.test").enabled


def test_client_flags_win_over_the_environment() -> None:
    env = {"KEYGATE_TLS_CA": "/env-ca.pem", "KEYGATE_TLS_CLIENT_CERT": "/env.crt", "KEYGATE_TLS_CLIENT_KEY": "/env.key"}
    tls = ClientTLS.from_env(env, ca="/flag-ca.pem", cert="/flag.crt", key="/flag.key", server_name="keygate.test")
    assert tls == ClientTLS(True, Path("/flag-ca.pem"), Path("/flag.crt"), Path("/flag.key"), "keygate.test")
    assert tls.options() == [("grpc.ssl_target_name_override", "keygate.test")]


@pytest.mark.parametrize(("env", "message"), [
    ({"KEYGATE_TLS_CLIENT_CERT": "/c"}, "--tls-client-key/KEYGATE_TLS_CLIENT_KEY: is required with --tls-client-cert"),
    ({"KEYGATE_TLS_CLIENT_KEY": "/k"}, "--tls-client-cert/KEYGATE_TLS_CLIENT_CERT: is required with --tls-client-key"),
    ({"KEYGATE_TLS": "true"}, "--tls/KEYGATE_TLS: must be on or off, not 'true'"),
    ({"KEYGATE_TLS_SERVER_NAME": "k"}, "--tls-server-name/KEYGATE_TLS_SERVER_NAME: needs TLS"),
])
def test_half_a_client_configuration_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        ClientTLS.from_env(env)
    assert refused.value.message.startswith(message)


def test_server_files_need_a_certificate_and_its_key() -> None:
    assert ServerFiles.of(None, None, None) is None
    assert ServerFiles.of(Path("c"), Path("k"), None) == ServerFiles(Path("c"), Path("k"))
    for cert, key, ca in ((Path("c"), None, None), (None, Path("k"), None), (None, None, Path("ca"))):
        with pytest.raises(InvalidArgument):
            ServerFiles.of(cert, key, ca)


def test_the_reloader_reads_only_changed_files_and_refuses_a_broken_set_once(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    files = ServerFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    first.cert_chain_pems[0].write_to_path(str(files.cert))
    first.private_key_pem.write_to_path(str(files.key))
    loaded = files.load()
    assert loaded is not None
    reload = _Reloader(files, loaded[0])
    assert reload() is None  # unchanged: grpc keeps the configuration in use
    second.cert_chain_pems[0].write_to_path(str(files.cert))  # the key does not match yet
    assert reload() is None
    assert reload._refused == files.identity()  # remembered: not read again until a file changes
    second.private_key_pem.write_to_path(str(files.key))
    assert reload() is not None
    assert reload() is None
