"""A keygate replica drained under load, behind the shipped Envoy: its ext_authz retry policy turns every call
the draining replica never decided into an answer from the other replica, instead of Envoy's 503. And which
gRPC statuses it retries: only those that say no decision was made.

Two real `keygate serve` processes are the two endpoints of envoy.yaml's keygate cluster; loops of allowed
requests never pause; one replica gets SIGTERM mid-load. It serves on for a third of its grace (the cluster's
health checking and outlier detection are taken out here, so the load never lets up), then stops: its port
refuses Envoy's new connections, grpc answers CANCELLED to the calls it had queued, and after the exit every
connection attempt to it fails. The same test without the retry policy shows what it is there for.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2

from ..integration.processes import Served
from .conftest import Envoy, Upstream, _http, running_envoy
from .replicas import HEALTH, Load, allowed_key, endpoints, port, statuses, two_replicas, warm

GRACE = 3.0  # the drained replica's --shutdown-grace: under load it serves on for a third of it, 1 s
BEFORE, AFTER = 1.0, 0.5  # seconds of load before the signal, and after the drained replica has exited
EXIT_BOUND = 5.0  # seconds, beyond the grace, for the drained replica to exit


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Served, Served, str]]:
    with two_replicas(database_url, "--shutdown-grace", str(GRACE)) as served:
        yield served


@pytest.mark.parametrize("retry", [pytest.param(True, id="shipped"), pytest.param(False, id="without-retry-policy")])
async def test_a_replica_drained_under_load_costs_no_request_a_503(
        replicas: tuple[Served, Served, str], upstream: Upstream, retry: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    drained, other, root = replicas
    key = await allowed_key(other, root)
    # Without the cluster's health checking and outlier detection, which would also move the load away (the
    # first once the replica says NOT_SERVING, the second once its port refuses): this is the retry policy's
    # test, with load that never lets up.
    with running_envoy(upstream, endpoints((port(drained), port(other)), retry=retry, drop=HEALTH)) as envoy:
        warm(envoy, key)
        load = Load(envoy.port, key)
        with load.running():
            time.sleep(BEFORE)
            signalled = time.monotonic()
            drained.process.send_signal(signal.SIGTERM)
            code = drained.process.wait(GRACE + EXIT_BOUND)
            exited = time.monotonic()
            time.sleep(AFTER)
        timeouts = envoy.stat("cluster.keygate.upstream_rq_timeout")
        retried = envoy.stat("cluster.keygate.upstream_rq_retry_success")
    phases = {"before": load.between(0, signalled), "drain": load.between(signalled, exited),
              "after": load.between(exited)}
    refused = sum(answer.status != 200 for answer in load.between(signalled))
    with capsys.disabled():
        print(f"\n{'with' if retry else 'without'} the retry policy: drained replica exited {code} "
              f"{exited - signalled:.2f}s after SIGTERM; "
              + ", ".join(f"{phase} {statuses(answers)}" for phase, answers in phases.items())
              + f"; {retried} calls retried onto the other replica, {timeouts} ext_authz timeouts", end="")
    assert code == 0, drained.logs()
    assert statuses(phases["drain"]).get(200), "the other replica answered nothing during the drain"
    # A call past the 250 ms timeout is a 503 on this loaded machine whatever happens to the replicas (none is
    # expected); every other 503 is a call the drained replica never decided.
    if retry:
        assert retried > 0, "the drain never tested the retry"
        assert refused <= timeouts, statuses(load.between(signalled))
    else:
        assert refused > timeouts, statuses(load.between(signalled))


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
