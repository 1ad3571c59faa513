"""A keygate replica drained under load, behind the shipped Envoy: its ext_authz retry policy turns every call
the draining replica never decided into an answer from the other replica, instead of Envoy's 503. And which
gRPC statuses it retries: only those that say no decision was made.

Two real `keygate serve` processes are the two endpoints of envoy.yaml's keygate cluster; loops of allowed
requests never pause; one replica gets SIGTERM mid-load. It serves on for a third of its grace (Envoy does
not follow health here, so the load never lets up), then stops: its port refuses Envoy's new connections,
grpc answers CANCELLED to the calls it had queued, and after the exit every connection attempt to it fails.
The same test without the retry policy shows what it is there for.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import http.client
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2

from ..integration.processes import Served, bootstrap, connect, start
from .conftest import Envoy, Upstream, _http, ext_authz_grpc_service, running_envoy

LOOPS = 6  # client connections to Envoy, each sending an allowed request as soon as the last is answered
GRACE = 3.0  # the drained replica's --shutdown-grace: under load it serves on for a third of it, 1 s
BEFORE, AFTER = 1.0, 0.5  # seconds of load before the signal, and after the drained replica has exited
EXIT_BOUND = 5.0  # seconds, beyond the grace, for the drained replica to exit


@dataclass
class Load:
    """Loops of one allowed request after another through Envoy, the statuses tallied by phase."""

    port: int
    key: str
    phase: str = "before"
    statuses: dict[str, collections.Counter[int]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        path, headers = f"/api/v1/chatflows/{uuid.uuid4()}", {"Authorization": f"Bearer {self.key}"}
        seen: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        while not self.stop.is_set():
            phase = self.phase
            try:
                conn.request("GET", path, headers=headers)
                with conn.getresponse() as answer:
                    answer.read()
                    seen[phase][answer.status] += 1
            except (OSError, http.client.HTTPException):
                seen[phase][0] += 1  # Envoy itself unreachable: never expected
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()
        with self.lock:
            for name, counter in seen.items():
                self.statuses.setdefault(name, collections.Counter()).update(counter)

    @property
    def refused(self) -> int:
        """Requests answered with anything but 200 once the signal was sent."""
        return sum(n for phase in ("drain", "after") for status, n in self.statuses.get(phase, {}).items()
                   if status != 200)


def two_replicas(ports: tuple[int, int], *, retry: bool) -> Callable[[dict[str, Any]], None]:
    """The keygate cluster with one endpoint per replica; without `retry`, the ext_authz retry policy removed."""
    def edit(config: dict[str, Any]) -> None:
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "keygate"]
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        group["lb_endpoints"] = [copy.deepcopy(endpoint) for _ in ports]
        for each, port in zip(group["lb_endpoints"], ports, strict=True):
            each["endpoint"]["address"]["socket_address"]["port_value"] = port
        if not retry:
            del ext_authz_grpc_service(config)["retry_policy"]
    return edit


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Served, Served, str]]:
    """Two `keygate serve` processes on one database, and its root key."""
    root = bootstrap(database_url)
    served = [start("--database-url", database_url, "--workers", "1", "--shutdown-grace", str(GRACE))
              for _ in range(2)]
    try:
        yield served[0], served[1], root
    finally:
        for each in served:
            if each.process.poll() is None:
                each.process.kill()
                each.process.wait()
            each.log_path.unlink(missing_ok=True)


def warm(envoy: Envoy, key: str) -> None:
    """Until both replicas have answered through Envoy (round robin: consecutive requests alternate), so that
    no connection set-up or first database read is left to count against the 250 ms of a loaded call."""
    deadline, allowed = time.monotonic() + 10, 0
    while allowed < 6:
        assert time.monotonic() < deadline, "Envoy never reached both replicas"
        response = _http(envoy.port, "GET", f"/api/v1/chatflows/{uuid.uuid4()}", {"Authorization": f"Bearer {key}"})
        allowed = allowed + 1 if response.status == 200 else 0


@pytest.mark.parametrize("retry", [pytest.param(True, id="shipped"), pytest.param(False, id="without-retry-policy")])
async def test_a_replica_drained_under_load_costs_no_request_a_503(
        replicas: tuple[Served, Served, str], upstream: Upstream, retry: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    drained, other, root = replicas
    client = connect(other, root)
    try:
        key = (await client.create(name="loaded", permissions=["chatflows:view"])).api_key
    finally:
        await client.channel.close()
    ports = (int(drained.address.rpartition(":")[2]), int(other.address.rpartition(":")[2]))
    with running_envoy(upstream, two_replicas(ports, retry=retry)) as envoy:
        warm(envoy, key)
        load = Load(envoy.port, key)
        loops = [threading.Thread(target=load.loop) for _ in range(LOOPS)]
        for loop in loops:
            loop.start()
        try:
            time.sleep(BEFORE)
            load.phase = "drain"
            drained.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = drained.process.wait(GRACE + EXIT_BOUND)
            exited = time.monotonic()
            load.phase = "after"
            time.sleep(AFTER)
        finally:
            load.stop.set()
            for loop in loops:
                loop.join(10)
        timeouts = envoy.stat("cluster.keygate.upstream_rq_timeout")
        retried = envoy.stat("cluster.keygate.upstream_rq_retry_success")
    with capsys.disabled():
        print(f"\n{'with' if retry else 'without'} the retry policy: drained replica exited {code} "
              f"{exited - signalled:.2f}s after SIGTERM; "
              + ", ".join(f"{phase} {dict(load.statuses.get(phase, {}))}" for phase in ("before", "drain", "after"))
              + f"; {retried} calls retried onto the other replica, {timeouts} ext_authz timeouts", end="")
    assert code == 0, drained.logs()
    assert load.statuses["drain"][200] > 0, "the other replica answered nothing during the drain"
    # A call past the 250 ms timeout is a 503 on this loaded machine whatever happens to the replicas (none is
    # expected); every other 503 is a call the drained replica never decided.
    if retry:
        assert retried > 0, "the drain never tested the retry"
        assert load.refused <= timeouts, load.statuses
    else:
        assert load.refused > timeouts, load.statuses


# --- which failures are retried -----------------------------------------------------------------


class FailsFirst(external_auth_pb2_grpc.AuthorizationServicer):
    """In keygate's place: fails the first Check with `status` (as grpc's stop answers a queued call
    CANCELLED), then allows every request."""

    def __init__(self, status: grpc.StatusCode) -> None:
        self.status = status
        self.calls = 0

    async def Check(self, request: external_auth_pb2.CheckRequest,
                    context: grpc.aio.ServicerContext) -> external_auth_pb2.CheckResponse:
        self.calls += 1
        if self.calls == 1:
            await context.abort(self.status, "stand-in failure")
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0),
                                               ok_response=external_auth_pb2.OkHttpResponse())


@pytest.mark.parametrize(("status", "retried"), [
    (grpc.StatusCode.CANCELLED, True), (grpc.StatusCode.UNAVAILABLE, True),
    (grpc.StatusCode.INTERNAL, False), (grpc.StatusCode.DEADLINE_EXCEEDED, False),
    (grpc.StatusCode.PERMISSION_DENIED, False)])
async def test_only_a_call_keygate_never_decided_is_asked_again(
        envoy: Envoy, status: grpc.StatusCode, retried: bool) -> None:
    server = grpc.aio.server()
    authorizer = FailsFirst(status)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authorizer, server)
    server.add_insecure_port(f"127.0.0.1:{envoy.keygate_port}")
    await server.start()
    try:
        response = await asyncio.to_thread(_http, envoy.port, "GET", "/anything", {})
    finally:
        await server.stop(0)
    assert (response.status, authorizer.calls) == ((200, 2) if retried else (503, 1)), response
