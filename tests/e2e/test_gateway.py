"""`keygate gateway` (`make gateway FLOWISE_URL=...`) as a user runs it: keygate on the embedded PostgreSQL
and Envoy with the shipped configuration, in front of a stand-in upstream (the echo server). The real
Flowise behind it: tests/flowise (`make e2e-flowise`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Upstream, _http, free_port

START_SECONDS = 60.0
STOP_SECONDS = 20.0
ROOT_KEY = re.compile(r"^\s+(fl_[0-9A-Za-z]+)\s*$", re.MULTILINE)
BANNER = "keygate gateway: http://"


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    output: Path
    port: int  # Envoy's listener
    admin: int
    keygate: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The embedded PostgreSQL's directory: outside pytest's 0700 temp tree (see tests/conftest.py)."""
    path = Path(tempfile.mkdtemp(prefix="keygate-gateway-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def gateway_env(data_dir: Path, upstream: Upstream, **extra: str) -> tuple[dict[str, str], int, int, int]:
    port, admin, keygate = free_port(), free_port(), free_port()
    env = {**os.environ, "KEYGATE_DATA_DIR": str(data_dir), "KEYGATE_METRICS": "off", "KEYGATE_SHUTDOWN_GRACE": "2",
           "KEYGATE_GATEWAY_LISTEN": f"127.0.0.1:{port}", "KEYGATE_ENVOY_ADMIN": f"127.0.0.1:{admin}",
           "KEYGATE_LISTEN": f"127.0.0.1:{keygate}", **extra}
    env.pop("DATABASE_URL", None)
    return env, port, admin, keygate


def start(data_dir: Path, upstream: Upstream, tmp: Path) -> Run:
    env, port, admin, keygate = gateway_env(data_dir, upstream)
    output = tmp / f"gateway-{time.monotonic_ns()}.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "keygate", "gateway", "--flowise-url", f"http://localhost:{upstream.port}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run = Run(process, output, port, admin, keygate)
    deadline = time.monotonic() + START_SECONDS
    while BANNER not in run.text():
        assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{run.text()}"
        assert time.monotonic() < deadline, f"the gateway did not announce itself:\n{run.text()}"
        time.sleep(0.05)
    return run


def interrupt(run: Run) -> float:
    """Ctrl-C, as a terminal sends it (to the whole foreground process group); seconds until it exited."""
    started = time.monotonic()
    os.killpg(run.process.pid, signal.SIGINT)
    try:
        run.process.wait(STOP_SECONDS)
    finally:
        try:
            os.killpg(run.process.pid, signal.SIGKILL)  # anything left of the group fails the test below
            leftover = True
        except ProcessLookupError:
            leftover = False
    assert not leftover, f"processes of the gateway were still running after it exited:\n{run.text()}"
    return time.monotonic() - started


def test_gateway_serves_in_front_of_an_upstream_and_ctrl_c_stops_both(
        data_dir: Path, upstream: Upstream, tmp_path: Path) -> None:
    run = start(data_dir, upstream, tmp_path)
    try:
        (root,) = ROOT_KEY.findall(run.text())  # the embedded database's first start: the root key, once
        allowed = _http(run.port, "GET", "/api/v1/chatflows", {"Authorization": f"Bearer {root}"})
        refused = _http(run.port, "GET", "/api/v1/chatflows", {})
    finally:
        elapsed = interrupt(run)

    assert allowed.status == 200, allowed
    seen = allowed.json()  # what the upstream received: keygate's identity, not the key
    assert seen["path"] == "/api/v1/chatflows"
    assert "x-keygate-key-id" in dict(seen["headers"])
    assert root not in json.dumps(seen)
    assert (refused.status, json.loads(refused.body)["code"]) == (401, "KEY_MISSING")
    assert run.process.returncode == 0
    assert elapsed < STOP_SECONDS

    again = start(data_dir, upstream, tmp_path)  # the same data directory: no second root key
    interrupt(again)
    assert ROOT_KEY.findall(again.text()) == []
    assert root not in again.text()


def test_a_child_that_exits_stops_the_other_and_the_gateway_exits_1(data_dir: Path, upstream: Upstream) -> None:
    """keygate cannot listen (its port is taken): it exits with its own one line, and the gateway stops
    Envoy and exits 1 instead of serving a gateway that answers 503 to everything."""
    env, _, admin, keygate = gateway_env(data_dir, upstream)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", keygate))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "keygate", "gateway", "--flowise-url",
                               f"http://127.0.0.1:{upstream.port}"], env=env, capture_output=True, text=True,
                              timeout=START_SECONDS)

    assert done.returncode == 1, done
    assert f"keygate: cannot listen on 127.0.0.1:{keygate}: the address is in use" in done.stderr
    assert "keygate gateway: keygate exited with status 1; stopping" in done.stderr
    assert BANNER not in done.stdout
    with pytest.raises(ConnectionRefusedError):  # Envoy is gone: nothing listens on its admin port
        socket.create_connection(("127.0.0.1", admin), timeout=1).close()


@pytest.mark.parametrize(("args", "message"), [
    ([], "keygate: KEYGATE_FLOWISE_URL (--flowise-url): required: the Flowise to protect, e.g. http://127.0.0.1:3000"),
    (["--flowise-url", "https://127.0.0.1:3000"],
     "keygate: KEYGATE_FLOWISE_URL (--flowise-url): must be http://host:port (no path, no TLS), "
     "not 'https://127.0.0.1:3000'"),
    (["--flowise-url", "http://127.0.0.1:3000", "--gateway-listen", "10000"],
     "keygate: KEYGATE_GATEWAY_LISTEN (--gateway-listen): must be host:port (e.g. 127.0.0.1:10000), not '10000'"),
    (["--flowise-url", "http://127.0.0.1:3000", "--cache-ttl", "abc"],
     "keygate: KEYGATE_CACHE_TTL (--cache-ttl): must be a number, not 'abc'"),
])
def test_a_bad_setting_is_one_line_and_starts_nothing(args: list[str], message: str, data_dir: Path,
                                                      upstream: Upstream) -> None:
    env, *_ = gateway_env(data_dir, upstream)
    env.pop("KEYGATE_FLOWISE_URL", None)
    done = subprocess.run([sys.executable, "-m", "keygate", "gateway", *args], env=env, capture_output=True,
                          text=True, timeout=30)

    assert (done.returncode, done.stdout, done.stderr) == (1, "", message + "\n")
    assert list(data_dir.iterdir()) == []  # no database started
