"""A real Envoy reaching keygate over mTLS: the shipped envoy.yaml with deploy/envoy/keygate-mtls.yaml's
`transport_socket` on its keygate cluster, only the file paths changed, against keygate serving mTLS: the
calls, and the cluster's health checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from keygate.config import Settings
from keygate.server import App

from ..certs import credentials, write
from .conftest import PROBE_PATH, ROOT, Database, Envoy, Mesh, Upstream, keygate_cluster, running_envoy
from .test_envoy import assert_identity, bearer, chatflow

SNIPPET = ROOT / "deploy" / "envoy" / "keygate-mtls.yaml"
ENVOY_FILES = "/etc/envoy/keygate/"  # the snippet's directory, replaced by the test's own
HEALTH_CHECK_BOUND = 3.0  # seconds: the cluster checks every second


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA  # signs keygate's certificate and Envoy's
    files: Path  # ca.crt, tls.crt, tls.key for Envoy; keygate.crt, keygate.key for keygate


def transport_socket(files: Path) -> dict[str, Any]:
    """The snippet's block with its files in `files`."""
    return yaml.safe_load(SNIPPET.read_text().replace(ENVOY_FILES, f"{files}/"))["transport_socket"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    files = tmp_path_factory.mktemp("envoy-mtls")
    server_name = transport_socket(files)["typed_config"]["sni"]
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(files / "ca.crt"))
    write(files, "tls", ca.issue_cert("envoy.test"))
    write(files, "keygate", ca.issue_cert(server_name, "127.0.0.1"))
    return Pki(ca, files)


@pytest.fixture(scope="module")
def tls_envoy(upstream: Upstream, pki: Pki) -> Iterator[Envoy]:
    def add_tls(config: dict[str, Any]) -> None:
        keygate_cluster(config)["transport_socket"] = transport_socket(pki.files)

    with running_envoy(upstream, add_tls) as envoy:
        yield envoy


def mtls_settings(envoy: Envoy, pki: Pki, client_ca: Path) -> Settings:
    return Settings(listen=f"127.0.0.1:{envoy.keygate_port}", tls_cert=pki.files / "keygate.crt",
                    tls_key=pki.files / "keygate.key", tls_client_ca=client_ca)


@pytest.fixture
async def mesh(tls_envoy: Envoy, upstream: Upstream, database: Database, pki: Pki) -> AsyncIterator[Mesh]:
    mesh = Mesh(tls_envoy, upstream, database.url, database.root, mtls_settings(tls_envoy, pki, pki.files / "ca.crt"),
                credentials=credentials(pki.ca, pki.ca.issue_cert("admin.test")))
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.close()


async def test_an_allowed_request_passes_through_ext_authz_over_mtls(mesh: Mesh) -> None:
    key = await mesh.create(name="reader", permissions=["chatflows:view"])
    flow = chatflow()
    response = await mesh.request("GET", f"/api/v1/chatflows/{flow}", bearer(key.api_key))
    assert_identity(response, key)
    denied = await mesh.request("DELETE", f"/api/v1/chatflows/{flow}", bearer(key.api_key))
    assert denied.status == 403 and denied.json()["code"] == "PERMISSION_DENIED"


async def test_envoy_health_checks_keygate_over_the_same_mtls(mesh: Mesh) -> None:
    """The cluster's health checks take its transport_socket, as its calls do: keygate answers them over mTLS."""
    passed = mesh.envoy.stat("cluster.keygate.health_check.success")
    deadline = time.monotonic() + HEALTH_CHECK_BOUND
    while mesh.envoy.stat("cluster.keygate.health_check.success") == passed:
        assert time.monotonic() < deadline, mesh.envoy.endpoint(mesh.envoy.keygate_port)
        await asyncio.sleep(0.05)
    assert mesh.envoy.endpoint(mesh.envoy.keygate_port)["health_flags"] == "healthy"


async def test_keygate_that_does_not_trust_envoy_means_503_never_a_pass(mesh: Mesh, pki: Pki,
                                                                         tmp_path: Path) -> None:
    key = await mesh.create(name="reader", permissions=["chatflows:view"])
    other = tmp_path / "other-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(other))
    await mesh.stop()
    mesh.app = await App.start(replace(mesh.settings, tls_client_ca=other), mesh.database_url)
    before = len(mesh.upstream.seen)
    for path in (f"/api/v1/chatflows/{chatflow()}", PROBE_PATH):
        response = await mesh.request("GET", path, bearer(key.api_key))
        assert response.status == 503, response
    assert mesh.upstream.seen[before:] == []

