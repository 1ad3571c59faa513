"""Certificates made in the test (trustme), laid out as Kubernetes mounts a Secret, and TLS channels.

kubelet (and so cert-manager's Secrets) publishes a new version of a volume by writing it into a fresh
`..<timestamp>` directory and renaming a `..data` symlink onto it; the visible files are symlinks
through `..data`. `SecretVolume.publish` does the same, so the tests rotate as production does.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grpc
import trustme

SERVER_NAMES = ("localhost", "127.0.0.1", "keygate.test")
_versions = itertools.count()


def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(*SERVER_NAMES)


class SecretVolume:
    """A directory of `tls.crt`, `tls.key` and `ca.crt`, each a symlink through `..data`."""

    NAMES = ("tls.crt", "tls.key", "ca.crt")

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def publish(self, leaf: trustme.LeafCert, ca: trustme.CA) -> None:
        """Atomically replace all three files: `leaf`'s chain and key, and `ca` (the CA clients chain to)."""
        version = self.root / f"..{next(_versions)}"
        version.mkdir()
        (version / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        (version / "tls.key").write_bytes(leaf.private_key_pem.bytes())
        (version / "ca.crt").write_bytes(ca.cert_pem.bytes())
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        for name in self.NAMES:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")


def write(directory: Path, name: str, leaf: trustme.LeafCert) -> tuple[Path, Path]:
    """`leaf`'s chain and key as `<name>.crt` and `<name>.key` in `directory`."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def credentials(ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(ca.cert_pem.bytes(), client.private_key_pem.bytes(),
                                        client.cert_chain_pems[0].bytes())


def secure_channel(address: str, ca: trustme.CA, client: trustme.LeafCert | None = None) -> grpc.aio.Channel:
    """A channel with its own connections (none shared with other channels): each is a new handshake."""
    return grpc.aio.secure_channel(address, credentials(ca, client), options=[("grpc.use_local_subchannel_pool", 1)])
