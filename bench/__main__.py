"""`python -m bench` (`make bench`): every figure of the issue in one run, printed as one table.

1. cached keys: keygate Check on one key, over and over, vs a constant-answer grpc.aio server with
   the same proto (the limit of this stack): saturation throughput (h2load) and p50/p99 at half of
   each server's own saturation (Python grpc.aio client, open loop);
2. cold keys: every call presents a key the server process has never seen (a fresh process per
   round), with 10k and with 1M keys in the table;
3. Flowise's per-request verification (scan for the plaintext, then scrypt) at 10k keys vs keygate;
4. Envoy in front (issue 4), route answering `direct_response`: no auth filter, Envoy's static
   `api_key_auth`, ext_authz to a constant-allow Python server, ext_authz to keygate (`envoy.py`);
5. keygate.client's local decision cache (issue 11): a cached check vs a remote Check, and the time
   from DeleteKey to the client refusing the key under load (`client_cache.py`).

Variants are measured in interleaved rounds (A, B, A, B, ...) and each figure is the median of
the rounds, so a slow patch of the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from keygate import logs
from keygate.v1 import authz_pb2

from . import client_cache, envoy, flowise_baseline, h2load, keys, latency, placement, postgres, report, servers
from .stats import median

METHOD_PATH = "/keygate.v1.AuthzService/Check"
RESOURCE, ACTION = "chatflows/bench-flow", "predictions:create"  # what Flowise checks per prediction
SMALL = 10_000
OTHER_LOAD_WARNING = 0.2  # CPUs


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float
    warm_up: float
    rounds: int
    workers: int
    workers_flag: bool  # whether `keygate serve` has --workers yet
    large: int
    cold_rate: float
    clients: int  # h2load connections at saturation, the same for every server
    streams: int  # h2load streams in flight per connection
    connections: int  # the latency client's connections
    envoy_duration: float  # seconds per measured Envoy run (throughput, then latency)
    envoy_warm_up: float
    throughput_rounds: int  # section 1's paired throughput rounds: its ratio is their median, as section 4's
    envoy_rounds: int  # interleaved Envoy rounds: more than the others, as Envoy's rounds swing most
    placement: placement.Placement | None  # where sections 1 and 4 run their processes (placement.py)
    quick: bool = False

    @property
    def h2load_shape(self) -> str:
        return f"h2load -c{self.clients} -m{self.streams}"


@dataclass(frozen=True, slots=True)
class Context:
    plan: Plan
    h2load: str
    envoy: str
    workdir: Path


def check_request(api_key: str) -> authz_pb2.CheckRequest:
    return authz_pb2.CheckRequest(api_key=api_key, resource=RESOURCE, action=ACTION)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="keygate's benchmarks (issues 3 and 4).")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short rounds, 100k instead of 1M keys")
    parser.add_argument("--workers", type=int, help="worker processes per server (default: keygate's default)")
    parser.add_argument("--duration", type=float, help="seconds per measured round (default 10; --quick 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure (median; default 3)")
    parser.add_argument("--throughput-rounds", type=int,
                        help="cached-key throughput rounds (median of the paired ratios; default 7; --quick 3)")
    parser.add_argument("--envoy-rounds", type=int,
                        help="interleaved Envoy rounds (median of the paired ratios; default 7; --quick 3)")
    parser.add_argument("--envoy-duration", type=float,
                        help="seconds per measured Envoy run, each of throughput and latency (default 4; --quick 1.5)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    help_text = servers.workers_help()
    workers = args.workers or servers.default_workers(help_text)
    if help_text is None and workers != 1:
        report.progress(f"note: `keygate serve` has no --workers yet; running 1 process of each server, not {workers}")
        workers = 1
    envoy_rounds = args.envoy_rounds or (3 if args.quick else 7)
    throughput_rounds = args.throughput_rounds or (3 if args.quick else 7)
    if workers < 1 or args.rounds < 1 or envoy_rounds < 1 or throughput_rounds < 1:
        raise SystemExit("bench: --workers, --rounds, --throughput-rounds and --envoy-rounds must be at least 1")
    duration = args.duration or (3.0 if args.quick else 10.0)
    return Plan(
        duration=duration,
        warm_up=1.0 if args.quick else 2.0,
        rounds=args.rounds,
        workers=workers,
        workers_flag=help_text is not None,
        large=100_000 if args.quick else 1_000_000,
        cold_rate=500.0,
        clients=max(8, 2 * workers),
        streams=16,
        connections=max(4, 2 * workers),
        envoy_duration=args.envoy_duration or (1.5 if args.quick else 4.0),
        envoy_warm_up=0.5 if args.quick else 1.0,
        throughput_rounds=throughput_rounds,
        envoy_rounds=envoy_rounds,
        placement=placement.split(workers),
        quick=args.quick,
    )


def _keygate(ctx: Context, url: str, tag: str, cpus: frozenset[int] | None = None) -> servers.Server:
    return servers.start_keygate(url, ctx.plan.workers, ctx.plan.workers_flag, ctx.workdir, tag, cpus)


@dataclass
class Findings:
    """What the sections produce: the table's rows, and the figures a later section compares with."""

    figures: list[report.Figure] = field(default_factory=list)
    p50: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # per variant, per round
    p99: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    worst_lag_ms: float = 0.0
    notes: list[str] = field(default_factory=list)  # sections' own notes, after the common ones

    def add_latency(self, variant: str, measured: latency.Latency, round_: int) -> None:
        if measured.failures:
            failed = sum(measured.failures.values())
            raise RuntimeError(f"{variant}: {failed} of {measured.calls + failed} calls failed or were denied "
                               f"({latency.describe(measured.failures)})")
        self.p50[variant].append(measured.p50_ms)
        self.p99[variant].append(measured.p99_ms)
        self.worst_lag_ms = max(self.worst_lag_ms, measured.lag_p99_ms)
        report.progress(f"  round {round_ + 1}: {variant} at {measured.rate:,.0f} calls/s: "
                        f"p50 {measured.p50_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms "
                        f"(client schedule lag p99 {measured.lag_p99_ms:.2f} ms)")

    def latency_text(self, variant: str) -> str:
        return f"{median(self.p50[variant]):.2f} / {median(self.p99[variant]):.2f} ms"


def cached(ctx: Context, found: Findings, url: str, api_key: str) -> None:
    """1: constant-answer server vs keygate on one (cached) key: throughput, then latency at half of it."""
    plan = ctx.plan
    request = check_request(api_key)
    body = h2load.write_body(request, ctx.workdir / "check.bin")
    with placement.placed(plan.placement) as cpus, \
            servers.running(servers.start_constant(plan.workers, ctx.workdir, cpus), request) as constant, \
            servers.running(_keygate(ctx, url, "cached", cpus), request) as keygate:
        both = (constant, keygate)
        paired: list[float] = []  # keygate / constant, per round: a slow patch of the machine hits both runs
        for round_ in range(plan.throughput_rounds):
            rps = {}
            for server in both if round_ % 2 == 0 else both[::-1]:  # who goes first alternates
                result = h2load.run(ctx.h2load, f"http://{server.target}{METHOD_PATH}", body, clients=plan.clients,
                                    streams=plan.streams, duration=plan.duration, warm_up=plan.warm_up)
                result.verify(server.reply.ByteSize())
                rps[server.name] = result.rps
                found.rps[server.name].append(result.rps)
                report.progress(f"  round {round_ + 1}: {server.name}: {result.rps:,.0f} req/s ({plan.h2load_shape})")
            paired.append(rps[keygate.name] / rps[constant.name])
        saturation = {s.name: median(found.rps[s.name]) for s in both}
        half = {name: rps / 2 for name, rps in saturation.items()}
        for round_ in range(plan.rounds):
            for server in both:
                found.add_latency(server.name, latency.measure(
                    server.target, [request], rate=half[server.name], duration=plan.duration,
                    warm_up=plan.warm_up, connections=plan.connections, distinct=False), round_)

    c, k = constant.name, keygate.name
    ratio = median(paired)
    listed = ", ".join(f"{r:.2f}" for r in paired)
    section = f"1. cached key, {plan.workers} worker(s)"
    found.figures += [
        report.Figure(section, f"constant-answer server: throughput ({plan.h2load_shape})",
                      f"{saturation[c]:,.0f} req/s"),
        report.Figure(section, f"keygate Check: throughput ({plan.h2load_shape})", f"{saturation[k]:,.0f} req/s"),
        report.Figure(section, f"throughput ratio keygate / constant, median of the rounds' paired ratios ({listed})",
                      f"{ratio:.2f}", "≥ 0.90", ratio >= 0.90),
        report.Figure(section, f"constant-answer server: p50 / p99 at {half[c]:,.0f} calls/s (half)",
                      found.latency_text(c)),
        report.Figure(section, f"keygate Check: p50 / p99 at {half[k]:,.0f} calls/s (half)", found.latency_text(k),
                      "p99 ≤ 2 ms", median(found.p99[k]) <= 2.0),
    ]


def cold(ctx: Context, found: Findings, tables: list[tuple[str, str, list[str]]]) -> None:
    """2: a fresh keygate per round, every call a key that process has never seen, per table size."""
    plan = ctx.plan
    needed = latency.calls_needed(plan.cold_rate, plan.warm_up, plan.duration)
    for round_ in range(plan.rounds):
        for label, url, plaintexts in tables:
            probe, pool = plaintexts[0], plaintexts[1:]  # the probe key is never among the measured ones
            if needed > len(pool):
                raise SystemExit(f"bench: {len(pool)} keys cannot feed {needed} distinct calls; shorten --duration")
            # Distinct within the round; rounds may reuse keys, as each round has a new server process.
            chosen = [check_request(pool[(round_ * needed + i) % len(pool)]) for i in range(needed)]
            with servers.running(_keygate(ctx, url, f"cold-{label}"), check_request(probe)) as keygate:
                measured = latency.measure(keygate.target, chosen, rate=plan.cold_rate, duration=plan.duration,
                                           warm_up=plan.warm_up, connections=plan.connections, distinct=True)
            found.add_latency(_cold(label), measured, round_)
    section = f"2. cold keys, {plan.cold_rate:,.0f} calls/s"
    found.figures += [
        report.Figure(section, f"keygate Check, every call a cache miss, {label} keys: p50 / p99",
                      found.latency_text(_cold(label)), "p99 ≤ 5 ms", median(found.p99[_cold(label)]) <= 5.0)
        for label, _, _ in tables
    ]
    (small, _, _), (large, _, _) = tables
    growth = median(found.p99[_cold(large)]) / median(found.p99[_cold(small)])
    found.figures.append(report.Figure(section, f"p99 growth from {small} to {large} keys", f"x{growth:.2f}",
                                       "no growth (≤ x1.20, noise)", growth <= 1.20))


def _cold(label: str) -> str:
    return f"keygate (cold, {label} keys)"


def flowise(ctx: Context, found: Findings, url: str, keygate: str, keygate_cold: str) -> None:
    """3: Flowise's verification at 10k keys vs keygate's figures from sections 1 and 2."""
    plan = ctx.plan
    presented = flowise_baseline.setup(url, SMALL)
    workers = os.cpu_count() or 1
    base = flowise_baseline.measure(url, presented, SMALL, duration=plan.duration, rounds=plan.rounds,
                                    workers=workers)
    report.progress(f"  Flowise-style: p50 {base.p50_ms:.1f} ms alone, {base.rps:.1f} req/s with {workers} workers")
    section = "3. Flowise baseline, 10k keys"
    found.figures += [
        report.Figure(section, "Flowise-style verification (scan + scrypt): p50 / p99, one at a time",
                      f"{base.p50_ms:.1f} / {base.p99_ms:.1f} ms"),
        report.Figure(section, f"Flowise-style verification: throughput, {workers} workers",
                      f"{base.rps:,.1f} req/s"),
        report.Figure(section, "throughput ratio keygate Check (cached) / Flowise",
                      f"x{median(found.rps[keygate]) / base.rps:,.0f}"),
        report.Figure(section, "latency ratio Flowise p50 / keygate p50 (cached, half saturation)",
                      f"x{base.p50_ms / median(found.p50[keygate]):,.0f}"),
        report.Figure(section, "latency ratio Flowise p50 / keygate p50 (cold keys, 10k)",
                      f"x{base.p50_ms / median(found.p50[keygate_cold]):,.0f}"),
    ]


def run(ctx: Context, pg: postgres.Postgres) -> Findings:
    plan = ctx.plan
    report.progress(f"loading {SMALL:,} and {plan.large:,} keys ...")
    small_url = pg.create_database("keygate_10k")
    small = keys.load(small_url, SMALL, keep=SMALL)
    large_url = pg.create_database("keygate_large")
    cold_keys = plan.rounds * latency.calls_needed(plan.cold_rate, plan.warm_up, plan.duration) + 1
    large = keys.load(large_url, plan.large, keep=cold_keys)
    report.progress(f"  {small.count:,} keys in {small.seconds:.1f} s, {large.count:,} keys in {large.seconds:.1f} s")

    found = Findings()
    report.progress("1. cached key: constant-answer server vs keygate ...")
    cached(ctx, found, small_url, small.keep[0])
    report.progress("2. cold keys ...")
    small_label, large_label = _count_label(SMALL), _count_label(plan.large)
    cold(ctx, found, [(small_label, small_url, small.keep), (large_label, large_url, large.keep)])
    report.progress("3. Flowise baseline ...")
    flowise(ctx, found, pg.create_database("flowise", migrate=False), "keygate (cached)", _cold(small_label))
    report.progress("4. Envoy: no auth filter, api_key_auth, ext_authz to a constant-allow server, to keygate ...")
    with placement.placed(plan.placement) as cpus:
        outcome = envoy.run(h2load_exe=ctx.h2load, envoy_exe=ctx.envoy, workdir=ctx.workdir, database_url=small_url,
                            api_key=small.keep[0], workers_flag=plan.workers_flag, rounds=plan.envoy_rounds,
                            duration=plan.envoy_duration, warm_up=plan.envoy_warm_up, server_cpus=cpus)
    found.figures += outcome.figures
    found.notes += outcome.notes
    report.progress("5. client library's local cache: cached vs remote check, revocation latency under load ...")
    measured = client_cache.measure(small_url, plan.workers, ctx.workdir, **client_cache.sizes(plan.quick))
    found.figures += measured.figures(plan.workers)
    found.notes.append(client_cache.NOTE)
    return found


def _count_label(count: int) -> str:
    return f"{count // 1_000_000}M" if count % 1_000_000 == 0 else f"{count // 1_000}k"


def _notes(plan: Plan, found: Findings) -> list[str]:
    return [
        f"- Every call: Check({RESOURCE!r}, {ACTION!r}) with a key allowed to do it.",
        f"- Throughput: {plan.h2load_shape}, closed loop, every reply checked (HTTP/2 status and reply size).",
        f"- Latency: Python grpc.aio client, open loop at the stated rate over {plan.connections} connections, "
        "time from issuing a call to its reply. Half = half of that server's own median throughput above.",
        f"- Latency client's schedule lag (p99, worst round): {found.worst_lag_ms:.2f} ms; well above 1 ms the "
        "client itself could not keep its schedule, so the latencies beside it are upper bounds.",
        "- Cold keys: a fresh keygate process per round; every call presents a key that process has not seen.",
        "- Flowise-style figures time the verification alone (no HTTP server around it); keygate's include "
        "the whole gRPC round trip.",
        *found.notes,
    ]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every server and PostgreSQL is stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logs.configure("warning")
    executable = h2load.ensure_installed()
    envoy_executable = envoy.executable()
    plan = make_plan(args)
    workdir = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    ctx = Context(plan, executable, envoy_executable, workdir)
    report.progress(f"keygate bench: {plan.workers} worker(s), {plan.rounds} rounds of {plan.duration:g} s; "
                    f"scratch directory {workdir}")
    busy_before = report.busy_cpus()
    if busy_before > OTHER_LOAD_WARNING:
        report.progress(f"warning: the machine is busy with other work ({busy_before:.2f} CPUs); "
                        "the figures will be noisy (run on an otherwise idle machine)")
    try:
        with postgres.embedded(workdir) as pg:
            meter = report.OtherLoad(pg.pid)
            found = run(ctx, pg)
            other_load = meter.cpus()
            pg_version = pg.version()
    except KeyboardInterrupt:
        report.progress("interrupted: servers and PostgreSQL stopped")
        return 130
    except RuntimeError as exc:
        report.progress(f"bench failed: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = report.machine({"PostgreSQL": pg_version, "h2load": h2load.version(executable),
                             "Envoy": envoy.version(envoy_executable)})
    no_flag = "" if plan.workers_flag else " (keygate has no --workers yet)"
    header.append(
        f"- settings: {plan.workers} worker(s) per server{no_flag}, "
        f"{plan.rounds} interleaved rounds of {plan.duration:g} s (+{plan.warm_up:g} s warm-up), medians "
        f"({plan.throughput_rounds} paired rounds for the cached-key throughput); "
        f"{plan.envoy_rounds} interleaved Envoy rounds of {plan.envoy_duration:g} s "
        f"(+{plan.envoy_warm_up:g} s warm-up); "
        f"keygate log level {os.environ.get('KEYGATE_LOG_LEVEL', 'info')}, "
        f"access log {os.environ.get('KEYGATE_ACCESS_LOG', logs.ACCESS_POLICIES[0])}"
        + ("; --quick" if args.quick else "")
    )
    header.append("- placement (sections 1 and 4): " + (plan.placement.describe() if plan.placement else
                                                       "none, every process where the scheduler puts it"))
    header.append(f"- other work on the machine: {busy_before:.2f} CPUs before the run, {other_load:.2f} during it "
                  "(near 0 for figures worth quoting)")
    if other_load > OTHER_LOAD_WARNING:
        report.progress(f"warning: other processes used {other_load:.2f} CPUs during the run; "
                        "do not quote these figures")
    print(report.render("keygate benchmarks", header, found.figures, _notes(plan, found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
