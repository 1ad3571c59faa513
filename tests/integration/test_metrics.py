"""/metrics scraped from real `keygate serve` processes on a real PostgreSQL: counts add up under load,
across worker processes and a worker's restart, no caller-chosen value becomes a label, and a bad
metrics setting fails at start in one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import promql_parser
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from keygate.domain.errors import KEY_SHAPED
from keygate.domain.keys import KeyFormat
from keygate.metrics import FAMILIES, LATENCY_BUCKETS, Exporter
from keygate.server import App
from keygate.v1 import authz_pb2, authz_pb2_grpc

from .processes import KEYGATE, Served, bootstrap, clean_environment, start, stop, worker_pids
from .support import Client

FORMAT = KeyFormat()
CHECK = "/keygate.v1.AuthzService/Check"
CHANNELS = 16  # connections: the kernel spreads them (not calls) over workers


def scrape(served: Served) -> str:
    with urllib.request.urlopen(served.metrics_url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def checks(served: Served, requests: list[authz_pb2.CheckRequest]) -> list[authz_pb2.CheckResponse]:
    """The requests, concurrently, spread over CHANNELS connections."""
    # A local subchannel pool each: channels to one target otherwise share one connection.
    channels = [grpc.aio.insecure_channel(served.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CHANNELS)]
    try:
        stubs = [authz_pb2_grpc.AuthzServiceStub(channel) for channel in channels]
        return await asyncio.gather(*(stubs[i % CHANNELS].Check(request, timeout=30)
                                      for i, request in enumerate(requests)))
    finally:
        for channel in channels:
            await channel.close()


def allowed(root: str, n: int) -> list[authz_pb2.CheckRequest]:
    return [authz_pb2.CheckRequest(api_key=root, resource="chatflows/flow-1", action="chatflows:view")] * n


def missing(n: int) -> list[authz_pb2.CheckRequest]:
    return [authz_pb2.CheckRequest(action="chatflows:view")] * n


async def test_a_scrape_under_load_adds_up(database_url: str) -> None:
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1")
    try:
        before = scrape(served)
        assert value(before, "keygate_processes") == 1
        assert value(before, "keygate_rpcs_total", method=CHECK, code="OK") == 0
        await checks(served, allowed(root, 1))  # the decision is made once, then remembered
        first = scrape(served)
        load = asyncio.ensure_future(checks(served, allowed(root, 299) + missing(100)))
        during = []
        while not load.done():  # scrapes while the calls are in flight must not disturb them
            during.append(await asyncio.to_thread(scrape, served))
        answers = await load
        after = scrape(served)
    finally:
        stop(served)
    assert [a.allowed for a in answers] == [True] * 299 + [False] * 100
    assert during, "the load ended before the first scrape"
    seen = [value(text, "keygate_rpcs_total", method=CHECK, code="OK") for text in (*during, after)]
    assert seen == sorted(seen) and seen[-1] == 400  # a denial is still an OK call
    histogram = "keygate_decision_duration_seconds"
    assert value(after, f"{histogram}_count", api="Check", decision="OK") == 300
    assert value(after, f"{histogram}_count", api="Check", decision="KEY_MISSING") == 100
    buckets = [float(le) for (name, labels), _ in samples(after).items() if name == f"{histogram}_bucket"
               and ("decision", "OK") in labels for key, le in labels if key == "le"]
    assert sorted(buckets) == [*LATENCY_BUCKETS, float("inf")]
    assert value(after, f"{histogram}_bucket", api="Check", decision="OK", le="+Inf") == 300
    assert value(after, f"{histogram}_sum", api="Check", decision="OK") > 0
    # 300 allowed Checks of one question: the first one alone misses; of the 299 sent at once after it, each
    # is a hit or (when the machine is slow enough that the listener's trust lapses mid-load) a miss.
    decisions = [(value(text, "keygate_cache_hits_total", cache="decisions"),
                  value(text, "keygate_cache_misses_total", cache="decisions")) for text in (first, after)]
    assert decisions[0] == (0, 1)
    hits, misses = decisions[1]
    assert hits + misses == 300 and hits >= 1
    assert value(after, "keygate_cache_entries", cache="decisions") == 1
    assert value(after, "keygate_cache_entries", cache="keys") == 1
    assert value(after, "keygate_change_listener_down") == 0
    assert value(after, "keygate_db_pool_max_connections") > 0
    assert {name for name, _ in samples(after)} >= {"keygate_db_errors_total", "keygate_usage_pending_keys",
                                                     "keygate_db_pool_acquire_waits_total"}


async def test_a_change_reaches_the_lag_histogram(database_url: str) -> None:
    """A key created through the API NOTIFYs; the process's listener applies it and measures the lag."""
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1")
    try:
        created = served.run("keys", "create", "--name", "lagged", "--workspace", "ws1",
                             "--permission", "chatflows:view", key=root)
        assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 10
        while value(text := scrape(served), "keygate_invalidation_lag_seconds_count") < 1:
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.1)
    finally:
        stop(served)
    lag = value(text, "keygate_invalidation_lag_seconds_sum") / value(text, "keygate_invalidation_lag_seconds_count")
    assert 0 <= lag < 1


async def test_workers_are_summed_and_a_restart_does_not_go_backwards(database_url: str) -> None:
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "2")
    try:
        await checks(served, allowed(root, 200) + missing(40))
        first = scrape(served)
        assert value(first, "keygate_processes") == 2
        assert value(first, "keygate_rpcs_total", method=CHECK, code="OK") == 240
        assert value(first, "keygate_decision_duration_seconds_count", api="Check", decision="OK") == 200
        # Both workers served: each has its own cache, so the key was looked up once in each.
        assert value(first, "keygate_cache_entries", cache="keys") == 2

        victim = min(worker_pids(served.process.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, served.logs()
            pids = worker_pids(served.process.pid)
            text = scrape(served)
            if len(pids) == 2 and victim not in pids and value(text, "keygate_processes") == 2:
                break
            assert value(text, "keygate_rpcs_total", method=CHECK, code="OK") == 240, text
            await asyncio.sleep(0.2)
        assert value(text, "keygate_worker_restarts_total") == 1
        assert value(text, "keygate_rpcs_total", method=CHECK, code="OK") == 240
        assert value(text, "keygate_decision_duration_seconds_count", api="Check", decision="OK") == 200
        await checks(served, allowed(root, 20))
        assert value(scrape(served), "keygate_rpcs_total", method=CHECK, code="OK") == 260
    finally:
        stop(served)


async def test_hostile_traffic_adds_no_caller_chosen_label(database_url: str) -> None:
    """Key-shaped resource names, made-up keys and methods, twice with different values: the scrape holds
    no key material and no caller's value, and the second round adds no series."""
    root = bootstrap(database_url)
    served = start("--database-url", database_url, "--workers", "1")
    sent: list[str] = []

    async def hostile_round() -> str:
        made_up = [FORMAT.generate() for _ in range(20)]
        resources = [f"chatflows/{FORMAT.generate()}" for _ in range(10)] + [f"chatflows/{os.urandom(8).hex()}"]
        methods = [f"/keygate.v1.AuthzService/{os.urandom(4).hex()}", f"/{os.urandom(4).hex()}.Svc/Check"]
        workspaces = [f"ws-{os.urandom(6).hex()}", "x" * 300]
        sent.extend([*made_up, *resources, *methods, *workspaces, root])
        requests = [authz_pb2.CheckRequest(api_key=k, resource="chatflows/f", action="chatflows:view")
                    for k in made_up]
        requests += [authz_pb2.CheckRequest(api_key=root, resource=r, action="chatflows:view") for r in resources]
        requests += [authz_pb2.CheckRequest(api_key=root, action="chatflows:view", workspace_id=w)
                     for w in workspaces]
        requests += [authz_pb2.CheckRequest(api_key=root[:-1] + "x", action=f"{os.urandom(3).hex()}:view")]
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = authz_pb2_grpc.AuthzServiceStub(channel)
            for request in requests:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Check(request, timeout=10)
            for method in methods:
                call = channel.unary_unary(method)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call(os.urandom(16), timeout=10)
        return scrape(served)

    try:
        first = await hostile_round()
        second = await hostile_round()
    finally:
        stop(served)
    assert value(second, "keygate_rpcs_total", method="unknown", code="UNIMPLEMENTED") == 4
    for text in (first, second):
        assert not KEY_SHAPED.search(text), text
        for value_sent in sent:
            assert value_sent not in text
    labels = {key: v for (_, labels) in samples(second) for key, v in labels}
    assert set(labels) <= {"method", "code", "api", "decision", "cache", "state", "kind", "le"}
    assert len(samples(first)) == len(samples(second)) < 400


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from its socket inodes and /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_off_opens_no_port(database_url: str) -> None:
    on = start("--database-url", database_url, "--workers", "1")
    off = start("--database-url", database_url, "--workers", "1", "--metrics", "off")
    try:
        grpc_on, grpc_off = (int(s.address.rpartition(":")[2]) for s in (on, off))
        metrics_port = int(re.search(r":(\d+)/metrics", on.metrics_url).group(1))
        assert listening_ports(on.process.pid) == {grpc_on, metrics_port}
        assert listening_ports(off.process.pid) == {grpc_off}
        assert "metrics off" in off.banner
    finally:
        stop(on)
        stop(off)


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYGATE, "serve", "--listen", "127.0.0.1:0", *args], capture_output=True, text=True,
                          env=clean_environment(**env), timeout=60)


def test_a_taken_metrics_port_fails_at_start_in_one_line(database_url: str) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        done = serve("--database-url", database_url, "--metrics", taken)
    assert done.returncode == 1
    assert done.stderr == (f"keygate: cannot serve metrics on {taken}: the address is in use "
                           "(set --metrics or KEYGATE_METRICS, or off)\n")


@pytest.mark.parametrize("address", ["9464", "localhost", ":9464", "127.0.0.1:http", "127.0.0.1:70000", "of"])
def test_a_malformed_metrics_address_is_one_line(database_url: str, address: str) -> None:
    for done in (serve("--database-url", database_url, "--metrics", address),
                 serve("--database-url", database_url, KEYGATE_METRICS=address)):
        assert done.returncode == 1
        assert done.stderr == (f"keygate: KEYGATE_METRICS (--metrics): must be host:port (default 127.0.0.1:9464) "
                               f"or off, not {address!r}\n")


def test_every_family_is_exported_even_before_its_first_sample() -> None:
    from keygate.metrics import Snapshot

    names = {family.name for family in Snapshot().families()}
    assert names == set(FAMILIES)


def envoy_check(path: str, key: str = "") -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "POST", path
    if key:
        http.headers["authorization"] = f"Bearer {key}"
    return request


async def test_decisions_are_labelled_for_each_api(app: App, client: Client) -> None:
    """Check, BatchCheck and ext_authz over a real channel: each call in its decision's histogram."""
    key = (await client.create(permissions=["chatflows:view", "predictions:create"])).api_key
    envoy = external_auth_pb2_grpc.AuthorizationStub(client.channel)
    for path, presented in [("/api/v1/prediction/f1", key), ("/api/v1/prediction/f1", ""),
                            ("/api/v1/prediction/f1", key), ("/api/v1/nowhere", key)]:
        await envoy.Check(envoy_check(path, presented))
    view = authz_pb2.BatchCheckItem(resource="chatflows/f1", action="chatflows:view")
    other = authz_pb2.BatchCheckItem(resource="chatflows/f1", action="chatflows:view", workspace_id="ws-other")
    for items in ([view, view], [view, other]):
        await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(api_key=key, items=items))
    with contextlib.suppress(grpc.aio.AioRpcError):
        await client.check(key, resource="chatflows/f1", action="no-such:verb")
    assert app.metrics is not None
    snapshot = app.metrics.snapshot()
    counts = {labels: sum(counts) for (name, labels), (_, counts, _) in snapshot.histograms.items()
              if name == "keygate_decision_duration_seconds"}
    assert counts == {("ext_authz", "OK"): 2, ("ext_authz", "KEY_MISSING"): 1, ("ext_authz", "NO_MATCHING_ROUTE"): 1,
                      ("BatchCheck", "OK"): 1, ("BatchCheck", "WORKSPACE_MISMATCH"): 1,
                      ("Check", "INVALID_ARGUMENT"): 1}
    assert snapshot.counters[("keygate_rpcs", (CHECK, "INVALID_ARGUMENT"))] == 1
    assert snapshot.counters[("keygate_rpcs", ("/envoy.service.auth.v3.Authorization/Check", "OK"))] == 4


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\bkeygate_[a-z_]+\b")


def exported_names(text: str) -> set[str]:
    """Every series name a scrape's families can have, sampled yet or not."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in suffixes[family.type]}


def queries() -> dict[str, str]:
    """Every PromQL expression of the shipped alert rules and dashboard, by where it is."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    assert set(rules) == {"groups"} and rules["groups"]
    found = {}
    for group in rules["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] and rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
            found[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads((DEPLOY / "grafana" / "keygate.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"].replace("$__rate_interval", "5m")
    return found


async def test_the_alert_rules_and_dashboard_query_only_exported_metrics(app: App, client: Client) -> None:
    """Each query parses as PromQL and names only metrics a real scrape of this server exports."""
    await client.check(client.root, resource="chatflows/f1")
    exporter = Exporter("127.0.0.1:0")
    try:
        assert app.metrics is not None
        exporter.show(app.metrics.snapshot)
        with urllib.request.urlopen(f"http://{exporter.address}/metrics", timeout=10) as response:
            exported = exported_names(response.read().decode())
    finally:
        exporter.close()
    alerts = {name for name in queries() if name.startswith("alert ")}
    assert {"alert KeygateHighDenialRate", "alert KeygateUnavailable", "alert KeygateChangeListenerDown",
            "alert KeygateInvalidationLagHigh", "alert KeygateSlowDecisions"} <= alerts
    for where, expr in queries().items():
        promql_parser.parse(expr)
        used = set(METRIC_NAME.findall(expr))
        assert used and used <= exported, (where, used - exported)


def test_the_readme_lists_every_metric_with_its_type() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    for name, family in FAMILIES.items():
        shown = f"{name}_total" if family.kind == "counter" else name
        assert re.search(rf"`{shown}`.*\| {family.kind} \|", section), shown
