"""gRPC load from h2load (Debian's nghttp2-client), which is far lighter than any Python client.

h2load knows nothing of gRPC, but a unary call is just an HTTP/2 POST: the body is the gRPC
frame (a zero byte, a 4-byte big-endian length, the serialized request), and the headers are
`content-type: application/grpc` and `te: trailers` (without `te` every stream is reset).
HTTP 2xx is not gRPC success: the status travels in the trailers. An OK reply carries the
response message as DATA and an error does not, so `verify` checks that every request
received exactly one response message of the expected size.

The Envoy section sends plain HTTP/2 (h2c) requests instead (`run_http`, `Result.verify_http`),
and reads per-request latencies from h2load's --log-file (`read_log`).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

GRPC_FRAME_HEADER = 5  # compressed flag + length
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
PACKAGE = "nghttp2-client"


def ensure_installed() -> str:
    """The h2load executable; as root install it with apt-get (saying so), otherwise explain and stop."""
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(f"bench: h2load is missing; install it with `sudo apt-get install -y {PACKAGE}`")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", PACKAGE]):
        print(f"bench: h2load is missing; running `{' '.join(command)}`", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit(f"bench: {PACKAGE} is installed but h2load is still not on PATH")
    return found


def version(executable: str) -> str:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1] if out.split() else "?"


def write_body(message: Message, path: Path) -> Path:
    """The request as one uncompressed gRPC frame, the file h2load sends with -d."""
    payload = message.SerializeToString()
    path.write_bytes(b"\x00" + struct.pack(">I", len(payload)) + payload)
    return path


@dataclass(frozen=True, slots=True)
class Result:
    rps: float
    done: int
    succeeded: int
    failed: int  # failed + errored + timeout, as h2load counts them
    status_2xx: int
    data_bytes: int  # DATA payload received: gRPC frames of the replies

    def verify(self, reply_size: int) -> None:
        """Raise unless every request was answered 2xx with one reply frame of `reply_size` bytes.

        A denial or a gRPC error has another size (or no DATA at all), so this catches both.
        """
        expected = self.succeeded * (GRPC_FRAME_HEADER + reply_size)
        problems = []
        if self.failed or self.status_2xx != self.done or self.succeeded != self.done:
            problems.append(f"{self.failed} failed, {self.status_2xx} 2xx of {self.done} done")
        if self.done == 0:
            problems.append("no request completed")
        elif abs(self.data_bytes - expected) > 0.01 * expected:  # a few replies cross the warm-up boundary
            problems.append(f"received {self.data_bytes} bytes of replies, expected about {expected}")
        if problems:
            raise RuntimeError("h2load: not every call succeeded: " + "; ".join(problems))

    def verify_http(self, body_size: int) -> None:
        """Raise unless every request was answered 2xx with a body of `body_size` bytes (plain HTTP/2)."""
        problems = []
        if self.failed or self.status_2xx != self.done or self.succeeded != self.done:
            problems.append(f"{self.failed} failed, {self.status_2xx} 2xx of {self.done} done")
        if self.done == 0:
            problems.append("no request completed")
        elif abs(self.data_bytes - self.done * body_size) > 0.01 * self.done * body_size:
            problems.append(f"received {self.data_bytes} bytes of bodies, expected about {self.done * body_size}")
        if problems:
            raise RuntimeError("h2load: not every request succeeded: " + "; ".join(problems))


def run(executable: str, url: str, body: Path, *, clients: int, streams: int, duration: float,
        warm_up: float, rate: float | None = None) -> Result:
    """Closed-loop load: `clients` connections with `streams` calls in flight on each; with `rate`,
    at most that many calls/s in all (h2load's --rps, split evenly over the clients).

    The warm-up is a separate run: h2load's own --warm-up-time leaves the warm-up's reply bytes in
    the traffic total, which would spoil `Result.verify`.
    """
    extra = () if rate is None else (f"--rps={rate / clients:g}",)
    if warm_up > 0:
        _run(executable, url, body, clients, streams, warm_up, GRPC_HEADERS, extra=extra)
    return _run(executable, url, body, clients, streams, duration, GRPC_HEADERS, extra=extra)


def run_http(executable: str, url: str, body: Path, headers: Sequence[str], *, clients: int, streams: int,
             duration: float, log_file: Path | None = None) -> Result:
    """One closed-loop run of plain HTTP/2 (h2c) POSTs of `body`, no warm-up of its own.

    With `log_file`, h2load writes one line per request there (see `read_log`).
    """
    return _run(executable, url, body, clients, streams, duration, headers, log_file)


def read_log(path: Path) -> tuple[list[float], Counter[int]]:
    """h2load's --log-file: each request's time from its start to the end of its response, in
    seconds, and how many requests got each HTTP status."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    with path.open() as rows:
        for row in rows:
            fields = row.split("\t")
            if len(fields) < 3:
                continue
            statuses[int(fields[1])] += 1
            latencies.append(int(fields[2]) / 1e6)
    return latencies, statuses


def _run(executable: str, url: str, body: Path, clients: int, streams: int, duration: float,
         headers: Sequence[str], log_file: Path | None = None, extra: Sequence[str] = ()) -> Result:
    command = [executable, url, "-d", str(body), *extra]
    for header in headers:
        command += ["-H", header]
    command += ["-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{round(duration * 1000)}ms"]
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load: no match for {pattern!r} in its output:\n{text}")
    return float(match.group(1))


def parse(text: str) -> Result:
    return Result(
        rps=_number(r"finished in [\d.]+\w*, ([\d.]+) req/s", text),
        done=int(_number(r"requests: .*?(\d+) done", text)),
        succeeded=int(_number(r"requests: .*?(\d+) succeeded", text)),
        failed=sum(int(_number(rf"requests: .*?(\d+) {what}", text)) for what in ("failed", "errored", "timeout")),
        status_2xx=int(_number(r"status codes: (\d+) 2xx", text)),
        data_bytes=int(_number(r"traffic: .*\((\d+)\) data", text)),
    )
