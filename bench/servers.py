"""Start, probe and stop the servers under test: keygate itself and the constant-answer server.

Each server runs in its own session (process group), so a Ctrl-C at the terminal reaches only
the benchmark, which then stops the servers in order; `stop` signals the whole group, which
also reaches any worker processes a server forks.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from keygate.v1 import authz_pb2, authz_pb2_grpc

from . import placement

START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0
SETTLED_CPU = 0.05  # a server using less than 5% of a core has finished starting up
STOP_TIMEOUT = 10.0
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass
class Server:
    name: str
    port: int
    workers: int
    processes: list[subprocess.Popen[bytes]]
    log: Path
    reply: authz_pb2.CheckResponse | None = None  # the probe's answer, once ready

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM every process group; SIGKILL whatever is left of a group after STOP_TIMEOUT."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            while _group_alive(proc) and time.monotonic() < deadline:  # workers may outlive their parent
                time.sleep(0.05)
            if _group_alive(proc):
                _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the group we created with start_new_session: the server and its workers


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygate_executable() -> str:
    beside = Path(sys.executable).with_name("keygate")
    found = str(beside) if beside.exists() else shutil.which("keygate")
    if not found:
        raise SystemExit("bench: the `keygate` command is not installed (run `make install`)")
    return found


def workers_help() -> str | None:
    """The help text of `keygate serve --workers`, or None while keygate has no such option."""
    out = subprocess.run([keygate_executable(), "serve", "--help"], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"^\s+--workers\b(.*?)(?=^\s+-|\Z)", out, re.S | re.M)  # the option's entry, not usage
    return " ".join(match.group(1).split()) if match else None


def default_workers(help_text: str | None) -> int:
    """What `keygate serve` runs without the flag: keygate's own setting (KEYGATE_WORKERS or its default)."""
    if help_text is None:
        return 1
    from keygate.config import Settings

    configured = getattr(Settings.from_env(), "workers", None)
    if isinstance(configured, int) and configured > 0:
        return configured
    env = os.environ.get("KEYGATE_WORKERS", "")
    match = re.search(r"default[:=]?\s*(\d+)", help_text)
    return int(env) if env.isdigit() and int(env) > 0 else int(match.group(1)) if match else 1


def spawn(command: list[str], log: Path, cpus: frozenset[int] | None = None) -> subprocess.Popen[bytes]:
    """`cpus`: where the process runs (placement.py); None: where this one may."""
    with log.open("ab") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                preexec_fn=placement.on(cpus))


def start_keygate(database_url: str, workers: int, with_workers_flag: bool, logdir: Path, tag: str,
                  cpus: frozenset[int] | None = None) -> Server:
    port = free_port()
    command = [keygate_executable(), "serve", "--listen", f"127.0.0.1:{port}", "--database-url", database_url]
    if with_workers_flag:
        command += ["--workers", str(workers)]
    log = logdir / f"keygate-{tag}.log"
    return Server(f"keygate ({tag})", port, workers, [spawn(command, log, cpus)], log)


def start_constant(workers: int, logdir: Path, cpus: frozenset[int] | None = None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.constant_server", "--listen", f"127.0.0.1:{port}"]
    if workers > 1:
        command.append("--reuseport")
    log = logdir / "constant.log"
    return Server("constant", port, workers, [spawn(command, log, cpus) for _ in range(workers)], log)


def check_once(target: str, request: authz_pb2.CheckRequest, timeout: float = 5.0) -> authz_pb2.CheckResponse:
    """One Check over a fresh channel; the channel is closed before any load generator starts."""
    with grpc.insecure_channel(target) as channel:
        return authz_pb2_grpc.AuthzServiceStub(channel).Check(request, timeout=timeout)


def _listening_sockets(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == LISTEN_STATE:
                count += 1
    return count


def wait_ready(server: Server, probe: authz_pb2.CheckRequest) -> None:
    """Block until every worker listens and `probe` is allowed; keep that answer in `server.reply`.

    With SO_REUSEPORT each worker has its own listening socket, and the kernel assigns a new
    connection only to sockets already listening, so load must not start before all of them are.
    """
    deadline = time.monotonic() + START_TIMEOUT
    answer: authz_pb2.CheckResponse | None = None
    while time.monotonic() < deadline:
        exited = [p for p in server.processes if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{server.name} exited with {exited[0].returncode}:\n{server.log_tail()}")
        if _listening_sockets(server.port) >= 1:
            try:
                answer = check_once(server.target, probe)
            except grpc.RpcError:
                answer = None
        if answer is not None and _listening_sockets(server.port) >= server.workers:
            break
        time.sleep(0.2)
    if answer is None:
        raise RuntimeError(f"{server.name} did not answer Check within {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
    if _listening_sockets(server.port) < server.workers:
        print(f"  note: {server.name} shows {_listening_sockets(server.port)} listening socket(s) "
              f"for {server.workers} workers", file=sys.stderr)
    if not answer.allowed:
        raise RuntimeError(f"{server.name} denied the benchmark key: {authz_pb2.DecisionCode.Name(answer.code)} "
                           f"({answer.reason})")
    server.reply = answer
    wait_settled(server)


def session_cpu_seconds(sessions: set[int]) -> float:
    """CPU time used so far by every process in these sessions (a server and any workers it forked)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) in sessions:  # fields after "(comm)": state ppid pgrp session ... utime stime
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_settled(server: Server, interval: float = 0.5) -> None:
    """Wait until the server is idle: answering Check is not the end of starting up (keygate, for
    one, loads a filter of every stored key in the background), and that work must not land
    inside a measurement."""
    sessions = {p.pid for p in server.processes}
    deadline = time.monotonic() + SETTLE_TIMEOUT
    used = session_cpu_seconds(sessions)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = session_cpu_seconds(sessions)
        if now - used < SETTLED_CPU * interval:
            return
        used = now
    print(f"  note: {server.name} was still busy {SETTLE_TIMEOUT:.0f} s after it started", file=sys.stderr)


@contextmanager
def running(server: Server, probe: authz_pb2.CheckRequest) -> Iterator[Server]:
    """The server, ready and verified; stopped on the way out, whatever happens."""
    try:
        wait_ready(server, probe)
        yield server
    finally:
        server.stop()
