"""Real `keygate` processes for tests: `serve` on a free port, the CLI against it, a clean stop.

A served process writes its log (one JSON line per RPC) to a file, not a pipe: a pipe that
nobody reads fills up under load and blocks the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc

from keygate.store.postgres import PING
from keygate.v1 import authz_pb2_grpc, keys_pb2_grpc

from .support import Client

KEYGATE = str(Path(sys.executable).with_name("keygate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without keygate's own settings, plus `extra`. Metrics go to a free port
    unless `extra` says otherwise: the default 127.0.0.1:9464 may be held by anything else on the machine."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_") and k != "DATABASE_URL"}
    environ.update({"KEYGATE_METRICS": "127.0.0.1:0", **extra})
    return environ


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str
    banner: str
    log_path: Path

    @property
    def metrics_url(self) -> str:
        """Where the banner says /metrics is served (tests serve it on a free port: several servers run at once)."""
        found = re.search(r"metrics on (http://\S+/metrics)", self.banner)
        assert found, self.banner
        return found.group(1)

    def run(self, *args: str, key: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
        environ.update(KEYGATE_SERVER=self.address, **env)
        if key is not None:
            environ["KEYGATE_API_KEY"] = key
        return subprocess.run([KEYGATE, *args], capture_output=True, text=True, env=environ, timeout=60)

    def logs(self) -> str:
        """Everything the server has written to stderr so far."""
        return self.log_path.read_text()


def start(*serve_args: str, env: Mapping[str, str] | None = None, address: str | None = None) -> Served:
    """`keygate serve --listen <address> *serve_args` (default 127.0.0.1:<free port>), returned once it says
    it is listening.

    The environment carries no KEYGATE_* setting or DATABASE_URL but those in `env`, and metrics on a
    free port unless `env` or `serve_args` say otherwise.
    """
    address = address or f"127.0.0.1:{free_port()}"
    fd, log_name = tempfile.mkstemp(prefix="keygate-serve-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        process = subprocess.Popen([KEYGATE, "serve", "--listen", address, *serve_args], stdout=subprocess.PIPE,
                                   stderr=log, text=True,
                                   env=clean_environment(**{"KEYGATE_METRICS": "127.0.0.1:0", **(env or {})}))
    served = Served(process, address, "", Path(log_name))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "listening on" in line:
            served.banner = "".join(lines)
            return served
    process.wait()
    raise AssertionError(f"serve exited early: {''.join(lines)} {served.logs()}")


# A keygate process's change listener is the only connection of its application_name whose last statement is
# its LISTEN or its keepalive ping.
LISTENER_BACKENDS = """SELECT pid FROM pg_stat_activity
    WHERE application_name = $1 AND (query LIKE 'LISTEN%' OR query = $2)"""  # $2: store.postgres.PING


async def listener_pids(admin: asyncpg.Connection, application_name: str) -> list[int]:
    """The backends of the change listeners of the processes connected as `application_name`."""
    return [r["pid"] for r in await admin.fetch(LISTENER_BACKENDS, application_name, PING)]


async def the_listener(admin: asyncpg.Connection, application_name: str, within: float = 5.0) -> int:
    """The one listener backend of the process connected as `application_name`. Waited for: on a loaded
    machine a ping may have been late, so the listener may be reconnecting (as it should) at the moment
    a test looks for it."""
    deadline = time.monotonic() + within
    while len(pids := await listener_pids(admin, application_name)) != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(pids) == 1, f"expected {application_name}'s one listener connection, found {pids}"
    return pids[0]


def worker_pids(supervisor: int) -> set[int]:
    """The spawned workers of `serve --workers N` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def assert_no_failures(logs: str) -> None:
    """A served process's log shows no crash, no traceback and no RPC that failed as INTERNAL."""
    assert "Traceback" not in logs, logs
    for line in logs.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            assert entry["event"] != "rpc_failed" and entry.get("code") != "INTERNAL", line


def stop(served: Served) -> str:
    """SIGTERM, a clean exit, and the server's log."""
    served.process.send_signal(signal.SIGTERM)
    served.process.communicate(timeout=30)
    logs = served.logs()
    served.log_path.unlink(missing_ok=True)
    assert served.process.returncode == 0, logs
    return logs


def finish(served: Served) -> str:
    """The log of a served process, stopped cleanly first (a clean exit asserted) if it is still running."""
    return served.logs() if served.process.poll() is not None else stop(served)


def bootstrap(database_url: str) -> str:
    """`keygate bootstrap`: a new root key, the only thing it prints."""
    booted = subprocess.run([KEYGATE, "bootstrap", "--database-url", database_url], capture_output=True,
                            text=True, env=clean_environment(), timeout=60)
    assert booted.returncode == 0, booted.stderr
    return booted.stdout.strip()


def connect(served: Served, root: str) -> Client:
    """A gRPC client of a served process (close `client.channel` when done)."""
    channel = grpc.aio.insecure_channel(served.address)
    return Client(channel, keys_pb2_grpc.KeyServiceStub(channel), authz_pb2_grpc.AuthzServiceStub(channel), root)
