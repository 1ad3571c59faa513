"""TLS for the gRPC port and for keygate's clients: certificates from PEM files, checked before use.

The server re-reads its files while running, because cert-manager and kubelet's secret volumes rotate
a certificate by replacing the files (usually by swapping a `..data` symlink), and a restart would
drop every connection. grpc asks `_Reloader` before each TLS handshake; it compares the files'
identity (device, inode, size, modification time) with the pair in use, so a handshake costs three
`stat` calls, and the files are read only when they changed. A new set that does not load (half
written, a key that does not match its certificate) is refused once with a warning and the previous
one stays in use. Messages name the setting and the path, never the files' contents.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from .domain.errors import InvalidArgument

log = structlog.get_logger(__name__)

SERVER_CERT = "--tls-cert/KEYGATE_TLS_CERT"
SERVER_KEY = "--tls-key/KEYGATE_TLS_KEY"
SERVER_CLIENT_CA = "--tls-client-ca/KEYGATE_TLS_CLIENT_CA"
CLIENT_SWITCH = "--tls/KEYGATE_TLS"
CLIENT_CA = "--tls-ca/KEYGATE_TLS_CA"
CLIENT_CERT = "--tls-client-cert/KEYGATE_TLS_CLIENT_CERT"
CLIENT_KEY = "--tls-client-key/KEYGATE_TLS_CLIENT_KEY"
CLIENT_SERVER_NAME = "--tls-server-name/KEYGATE_TLS_SERVER_NAME"

LOAD_ATTEMPTS = 5  # at start, reads of files that a rotation replaces meanwhile

# A file's identity as `stat` sees it through symlinks; an errno where it cannot be stat'ed.
_Identity = tuple[int, ...]


class _Encrypted(Exception):
    """Raised by the password callback: grpc takes only unencrypted keys, and a prompt would hang."""


def _no_password() -> bytes:
    raise _Encrypted


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(setting, f"cannot read {path}: {exc.strerror or exc}") from None


def _check_certificates(pem: bytes, path: Path, setting: str) -> None:
    """At least one PEM certificate, and nothing OpenSSL cannot parse."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise InvalidArgument(setting, f"{path} holds no valid PEM certificate") from None


def _check_pair(cert: Path, key: Path, cert_setting: str, key_setting: str) -> None:
    """The key is an unencrypted PEM private key belonging to the first certificate in `cert`."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise InvalidArgument(key_setting, f"{key} is encrypted; give an unencrypted PEM key") from None
    except (ssl.SSLError, ValueError) as exc:
        mismatch = getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH"
        problem = f"does not match the certificate in {cert}" if mismatch else "holds no valid PEM private key"
        raise InvalidArgument(key_setting, f"{key} {problem}") from None
    except OSError as exc:
        raise InvalidArgument(cert_setting, f"cannot read {cert} or {key}: {exc.strerror or exc}") from None


# --- the server --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """The server's certificate chain and key, and the CA its clients' certificates must chain to
    (set: client certificates are required, mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def of(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerFiles | None:
        """None for plaintext; InvalidArgument for half a configuration."""
        if cert is None and key is None:
            if client_ca is not None:
                raise InvalidArgument(SERVER_CLIENT_CA, f"needs {SERVER_CERT} and {SERVER_KEY} as well")
            return None
        if key is None:
            raise InvalidArgument(SERVER_KEY, f"is required with {SERVER_CERT}")
        if cert is None:
            raise InvalidArgument(SERVER_CERT, f"is required with {SERVER_KEY}")
        return cls(cert, key, client_ca)

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)

    def identity(self) -> tuple[_Identity, ...]:
        """What changes when any file is replaced, rewritten or swapped in through a symlink (ctime: even
        a rewrite that restores the modification time)."""
        identities: list[tuple[int, ...]] = []
        for path in self._paths():
            try:
                s = os.stat(path)
                identities.append((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
            except OSError as exc:
                identities.append((exc.errno or -1,))
        return tuple(identities)

    def load(self) -> tuple[tuple[_Identity, ...], grpc.ServerCertificateConfiguration] | None:
        """The files' identity and their contents as grpc takes them, once checked; None if they changed
        while being read (a rotation under way: the caller tries again later)."""
        before = self.identity()
        cert = _read(self.cert, SERVER_CERT)
        key = _read(self.key, SERVER_KEY)
        _check_certificates(cert, self.cert, SERVER_CERT)
        _check_pair(self.cert, self.key, SERVER_CERT, SERVER_KEY)  # by path: so the identity check below
        client_ca = None
        if self.client_ca is not None:
            client_ca = _read(self.client_ca, SERVER_CLIENT_CA)
            _check_certificates(client_ca, self.client_ca, SERVER_CLIENT_CA)
        if self.identity() != before:  # ... proves that what was checked is what was read
            return None
        return before, grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class _Reloader:
    """grpc's certificate fetcher: a new configuration when the files changed and load, else None
    (grpc keeps the one in use). Runs on grpc's threads, before every handshake."""

    def __init__(self, files: ServerFiles, identity: tuple[_Identity, ...]) -> None:
        self._files = files
        self._in_use = identity
        self._refused: tuple[_Identity, ...] | None = None  # warned about once; retried when it changes
        self._loading = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        identity = self._files.identity()
        if identity in (self._in_use, self._refused) or not self._loading.acquire(blocking=False):
            return None
        try:
            loaded = self._files.load()
        except InvalidArgument as exc:
            self._refused = identity
            log.warning("tls_reload_refused", error=exc.message, keeping="the certificate in use")
            return None
        finally:
            self._loading.release()
        if loaded is None:
            return None
        self._in_use, config = loaded
        log.info("tls_reloaded", cert=str(self._files.cert), client_ca=str(self._files.client_ca or ""))
        return config


def server_credentials(files: ServerFiles) -> grpc.ServerCredentials:
    """Credentials that follow the files; InvalidArgument (naming the setting) if they do not load now."""
    for _ in range(LOAD_ATTEMPTS):  # replaced while read: read the new ones
        if (loaded := files.load()) is not None:
            break
    else:
        raise InvalidArgument(SERVER_CERT, f"{files.cert} and its key kept changing while read")
    identity, config = loaded
    # grpc keeps the configuration in use when the fetcher returns None; types-grpcio's stub omits None.
    return grpc.dynamic_ssl_server_credentials(config, _Reloader(files, identity),  # type: ignore[arg-type]
                                               require_client_authentication=files.client_ca is not None)


def add_port(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Listen with TLS when `credentials` are given, in plaintext otherwise; grpc's port (0: it failed)."""
    if credentials is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, credentials)


def is_loopback(listen: str) -> bool:
    """Whether `host:port` reaches only this machine (unix sockets included): plaintext is safe there."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or empty (every interface)
        return False


def check_server(listen: str, files: ServerFiles | None) -> None:
    """At start, once: files that do not load fail now, in one line; plaintext off this machine warns."""
    if files is not None:
        server_credentials(files)
    elif not is_loopback(listen):
        log.warning("listening_without_tls", listen=listen,
                    hint=f"API keys cross the network in clear text: set {SERVER_CERT} and {SERVER_KEY}")


# --- clients -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client reaches keygate: `enabled` False is plaintext. Without `ca`, the server is checked
    against grpc's default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else the bundle grpcio ships)."""

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        """Built in code, as from the environment: a CA or client certificate turns TLS on, and a path may
        be a str. (`ClientTLS(ca=...)` without `enabled=True` was plaintext, the keys sent in clear, and a
        str path an AttributeError at the first read.)"""
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if self.ca is not None or self.cert is not None:
            object.__setattr__(self, "enabled", True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: object) -> ClientTLS:
        """Environment first, then any flag that is not None. Any TLS file turns TLS on."""
        env = os.environ if env is None else env
        switch = env.get("KEYGATE_TLS", "off").lower() or "off"
        if switch not in ("on", "off"):
            raise InvalidArgument(CLIENT_SWITCH, f"must be on or off, not {switch!r}")

        def path(flag: str, name: str) -> Path | None:
            value = flags.get(flag) or env.get(name)
            return Path(str(value)) if value else None

        ca = path("ca", "KEYGATE_TLS_CA")
        cert = path("cert", "KEYGATE_TLS_CLIENT_CERT")
        key = path("key", "KEYGATE_TLS_CLIENT_KEY")
        if (cert is None) != (key is None):
            given, missing = (CLIENT_CERT, CLIENT_KEY) if key is None else (CLIENT_KEY, CLIENT_CERT)
            raise InvalidArgument(missing, f"is required with {given}")
        enabled = bool(flags.get("enabled")) or switch == "on" or any((ca, cert))
        server_name = str(flags.get("server_name") or env.get("KEYGATE_TLS_SERVER_NAME") or "") or None
        if server_name and not enabled:
            raise InvalidArgument(CLIENT_SERVER_NAME, f"needs TLS: set {CLIENT_CA} or {CLIENT_SWITCH}")
        return cls(enabled, ca, cert, key, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        """The files read and checked now; InvalidArgument naming the setting otherwise."""
        roots = None
        if self.ca is not None:
            roots = _read(self.ca, CLIENT_CA)
            _check_certificates(roots, self.ca, CLIENT_CA)
        cert = key = None
        if self.cert is not None and self.key is not None:
            cert, key = _read(self.cert, CLIENT_CERT), _read(self.key, CLIENT_KEY)
            _check_certificates(cert, self.cert, CLIENT_CERT)
            _check_pair(self.cert, self.key, CLIENT_CERT, CLIENT_KEY)
        return grpc.ssl_channel_credentials(roots, key, cert)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def channel(self, server: str) -> grpc.Channel:
        """A blocking channel to `server`; asyncio callers build theirs from `credentials()` and `options()`."""
        if not self.enabled:
            return grpc.insecure_channel(server)
        return grpc.secure_channel(server, self.credentials(), options=self.options())
