"""`python -m bench.soak` (`make soak`): keygate under steady load for a long time, watched for leaks.

One run: an embedded PostgreSQL, `keygate serve` with its default workers, one key. First the
saturation of that server on this machine (h2load closed loop, as `make bench` measures it), then
`--duration` seconds of Check at `--fraction` of it (h2load's --rps), in back-to-back windows of
`--window` seconds, so errors are counted as they happen rather than once at the end. Every
`--interval` seconds a sampler sums the RSS and the open file descriptors of every process in the
server's session (the server and the workers it forks).

Verdicts (exit status 1 if any fails), with the samples split into thirds by time:
- errors: zero (every call answered 2xx with an allowed reply of the probe's size; a gRPC error or
  a denial changes the reply's size, which `Result.verify` catches);
- the offered rate was sustained: every window's rate within 10% of the target;
- RSS flat: the last third's median within RSS_GROWTH of the second third's (the first third is
  warm-up: caches, allocator arenas and connection pools fill there);
- fds bounded, counted in three kinds, as each has its own bound:
  - the load generator's connections (TCP sockets on the server's port), and sockets whose peer has
    gone but that the server has not closed yet (in no connection table): once the load stops, none is
    left but the listening sockets, exactly as before the load;
  - other sockets (the PostgreSQL pool and the change listener, which grow and shrink with demand):
    never more than DATABASE_SOCKETS per process;
  - everything else (files, pipes, eventfds, epoll): no new high in the last third against the second
    third's, and once the load stops, no more than before it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil

from keygate import logs
from keygate.v1 import authz_pb2

from . import h2load, keys, postgres, report, servers

METHOD_PATH = "/keygate.v1.AuthzService/Check"
RESOURCE, ACTION = "chatflows/soak-flow", "predictions:create"
CLIENTS, STREAMS = 8, 16  # the saturation shape of `make bench`
SATURATION_SECONDS, SATURATION_WARM_UP = 10.0, 2.0
RSS_GROWTH = 0.05  # the last third's median RSS may exceed the second third's by this fraction
RATE_TOLERANCE = 0.10
FD_SETTLE_SECONDS = 15.0  # how long closed connections may take to leave the server's fd table
# store.postgres.Store.connect's pool (max_size 10), the change listener's own connection, and the
# reachability probe's: what one keygate process may hold open to PostgreSQL at most.
DATABASE_SOCKETS = 12


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the soak started
    rss: int  # bytes, summed over the server's processes
    fds: int  # all of them
    clients: int  # TCP sockets on the server's port: listening, and the load generator's connections
    sockets: int  # every other socket in a connection table (PostgreSQL)
    closing: int  # socket descriptors in no connection table: the peer has gone, the server not closed it yet
    processes: int

    @property
    def files(self) -> int:
        """Open descriptors that are not sockets: files, pipes, eventfds, epoll."""
        return self.fds - self.clients - self.sockets - self.closing


@dataclass(frozen=True, slots=True)
class Window:
    end: float  # seconds since the soak started
    rate: float
    done: int
    errors: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured saturation (default 0.5)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per load window (default 30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    args = parser.parse_args(argv)
    if not (0 < args.fraction <= 1 and args.duration >= 3 * args.interval and args.window > 0 and args.interval > 0):
        parser.error("need 0 < --fraction <= 1, --duration >= 3 x --interval, positive --window and --interval")
    return args


def session_processes(session: int) -> list[psutil.Process]:
    """Every live process of this session: the server and the workers it forked."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _socket_fds(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def sample(session: int, port: int, at: float) -> Sample:
    rss = fds = clients = sockets = closing = 0
    processes = session_processes(session)
    for process in processes:
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
            connections = process.net_connections(kind="all")
            socket_fds = _socket_fds(process.pid)
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
        ours = sum(1 for c in connections if c.laddr and getattr(c.laddr, "port", None) == port)
        clients += ours
        sockets += len(connections) - ours
        closing += max(0, socket_fds - len(connections))
    return Sample(at, rss, fds, clients, sockets, closing, len(processes))


class Sampler(threading.Thread):
    """Samples the server every `interval` seconds until stopped."""

    def __init__(self, session: int, port: int, started: float, interval: float) -> None:
        super().__init__(daemon=True)
        self.samples: list[Sample] = []
        self._session, self._port, self._t0, self._interval = session, port, started, interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.samples.append(sample(self._session, self._port, time.monotonic() - self._t0))

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join()
        return self.samples


def thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """The samples split by time into the first, second and last third of the soak."""
    span = samples[-1].at
    return ([s for s in samples if s.at <= span / 3], [s for s in samples if span / 3 < s.at <= 2 * span / 3],
            [s for s in samples if s.at > 2 * span / 3])


def verdicts(samples: list[Sample], windows: list[Window], target: float, before: Sample,
             after: Sample) -> list[tuple[str, str, bool]]:
    """(rule, figures, held) for each of the module docstring's rules."""
    _, second, last = thirds(samples)
    errors = sum(w.errors for w in windows)
    slowest = min(w.rate for w in windows)
    rss_2, rss_3 = statistics.median(s.rss for s in second), statistics.median(s.rss for s in last)
    files_2, files_3 = max(s.files for s in second), max(s.files for s in last)
    database = max(s.sockets for s in samples)
    database_bound = DATABASE_SOCKETS * before.processes
    mib = 1024 * 1024
    return [
        ("no errors", f"{errors} of {sum(w.done for w in windows):,} calls", errors == 0),
        (f"rate sustained (every window within {RATE_TOLERANCE:.0%} of {target:,.0f}/s)",
         f"slowest window {slowest:,.0f}/s", slowest >= (1 - RATE_TOLERANCE) * target),
        (f"RSS flat (median, last third <= second third + {RSS_GROWTH:.0%})",
         f"{rss_2 / mib:.1f} -> {rss_3 / mib:.1f} MiB ({(rss_3 - rss_2) / rss_2:+.1%})",
         rss_3 <= rss_2 * (1 + RSS_GROWTH)),
        ("client sockets back after the load (= before it, none closing)",
         f"{before.clients} before, {after.clients} after, {after.closing} closing",
         after.clients == before.clients and after.closing == 0),
        (f"database sockets bounded (<= {DATABASE_SOCKETS} per process)", f"at most {database}",
         database <= database_bound),
        ("other fds: no new high (max, last third <= second third)", f"{files_2} -> {files_3}", files_3 <= files_2),
        ("other fds back after the load (<= before it)", f"{before.files} before, {after.files} after",
         after.files <= before.files),
    ]


def settled(session: int, port: int, listening: int) -> Sample:
    """A sample once only the listening sockets are left on the server's port and none is closing (the
    load generator's connections are all gone), or after FD_SETTLE_SECONDS, whichever is first."""
    deadline = time.monotonic() + FD_SETTLE_SECONDS
    now = sample(session, port, 0)
    while (now.clients > listening or now.closing) and time.monotonic() < deadline:
        time.sleep(0.5)
        now = sample(session, port, 0)
    return now


def span(values: Iterable[int]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]}" if ordered[0] == ordered[-1] else f"{ordered[0]}-{ordered[-1]}"


def render(header: list[str], samples: list[Sample], windows: list[Window],
           rules: list[tuple[str, str, bool]]) -> str:
    mib = 1024 * 1024
    lines = ["## keygate soak", "", *header, "",
             "| minute | calls | errors | rate /s | RSS MiB (median) | fds (min-max) | of which client sockets "
             "| closing | database sockets | other fds | processes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for minute in range(int(samples[-1].at // 60) + 1):
        in_minute = [s for s in samples if minute * 60 < s.at <= (minute + 1) * 60] or [samples[-1]]
        ws = [w for w in windows if minute * 60 < w.end <= (minute + 1) * 60]
        calls = sum(w.done for w in ws)
        rate = statistics.mean(w.rate for w in ws) if ws else 0.0
        lines.append(f"| {minute + 1} | {calls:,} | {sum(w.errors for w in ws)} | {rate:,.0f} | "
                     f"{statistics.median(s.rss for s in in_minute) / mib:.1f} | "
                     f"{span(s.fds for s in in_minute)} | {span(s.clients for s in in_minute)} | "
                     f"{span(s.closing for s in in_minute)} | "
                     f"{span(s.sockets for s in in_minute)} | {span(s.files for s in in_minute)} | "
                     f"{max(s.processes for s in in_minute)} |")
    lines += ["", "| rule | figures | result |", "|---|---|---|"]
    lines += [f"| {rule} | {figures} | {'pass' if held else '**FAIL**'} |" for rule, figures, held in rules]
    return "\n".join(lines)


def soak(args: argparse.Namespace, pg: postgres.Postgres, executable: str, workdir: Path) -> tuple[str, bool]:
    url = pg.create_database("soak")
    api_key = keys.load(url, 1, keep=1).keep[0]
    probe = authz_pb2.CheckRequest(api_key=api_key, resource=RESOURCE, action=ACTION)
    help_text = servers.workers_help()
    workers = servers.default_workers(help_text)
    server = servers.start_keygate(url, workers, help_text is not None, workdir, "soak")
    body = h2load.write_body(probe, workdir / "check.bin")
    target_url = f"http://{server.target}{METHOD_PATH}"
    with servers.running(server, probe):
        assert server.reply is not None  # running() verified the probe
        reply_size = server.reply.ByteSize()
        session = server.processes[0].pid
        saturation = h2load.run(executable, target_url, body, clients=CLIENTS, streams=STREAMS,
                                duration=SATURATION_SECONDS, warm_up=SATURATION_WARM_UP)
        saturation.verify(reply_size)
        rate = args.fraction * saturation.rps
        report.progress(f"saturation {saturation.rps:,.0f} Check/s; soaking at {rate:,.0f}/s for {args.duration:g} s")
        listening = server.workers  # one listening socket per worker (SO_REUSEPORT)
        before = settled(session, server.port, listening)  # the saturation run's connections closed
        started = time.monotonic()
        sampler = Sampler(session, server.port, started, args.interval)
        sampler.start()
        windows: list[Window] = []
        try:
            while (left := args.duration - (time.monotonic() - started)) > 1:
                result = h2load.run(executable, target_url, body, clients=CLIENTS, streams=STREAMS,
                                    duration=min(args.window, left), warm_up=0, rate=rate)
                errors = result.failed + (result.done - result.status_2xx)
                try:
                    result.verify(reply_size)
                except RuntimeError as exc:
                    report.progress(f"  window failed: {exc}")
                    errors = max(errors, 1)
                windows.append(Window(time.monotonic() - started, result.rps, result.done, errors))
                report.progress(f"  {windows[-1].end:5.0f} s: {result.rps:,.0f}/s, {errors} errors, "
                                f"{sampler.samples[-1].rss / 2**20 if sampler.samples else 0:.1f} MiB, "
                                f"{sampler.samples[-1].fds if sampler.samples else 0} fds")
        finally:
            samples = sampler.stop()
        after = settled(session, server.port, listening)
    rules = verdicts(samples, windows, rate, before, after)
    header = report.machine({"PostgreSQL": pg.version(), "h2load": h2load.version(executable)})
    header.append(f"- settings: {workers} worker(s); saturation {saturation.rps:,.0f} Check/s "
                  f"(h2load -c{CLIENTS} -m{STREAMS}, {SATURATION_SECONDS:g} s); soak at {args.fraction:.0%} of it, "
                  f"{rate:,.0f}/s, for {args.duration:g} s in {args.window:g} s windows; a sample every "
                  f"{args.interval:g} s; RSS and fds summed over the server's processes")
    return render(header, samples, windows, rules), all(held for _, _, held in rules)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logs.configure("warning")
    executable = h2load.ensure_installed()
    workdir = Path(tempfile.mkdtemp(prefix="keygate-soak-"))
    try:
        with postgres.embedded(workdir) as pg:
            table, passed = soak(args, pg, executable, workdir)
    except KeyboardInterrupt:
        report.progress("interrupted: keygate and PostgreSQL stopped")
        return 130
    except RuntimeError as exc:
        report.progress(f"soak failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
