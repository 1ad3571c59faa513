"""A keygate replica that hangs under load, behind the shipped Envoy: the keygate cluster's outlier detection and
health checking take it out of rotation within a fraction of a second, and bring it back once it answers again.

Two real `keygate serve` processes are the two endpoints of envoy.yaml's keygate cluster; loops of allowed
requests never pause; one replica is SIGSTOPped mid-load (a hang: its port still accepts, nothing answers),
then SIGCONTed. A request that pays the hang waits the ext_authz filter's 250 ms and gets Envoy's 503 (a
timed-out call has no time left for the retry policy). The same test without the cluster's health checking
and outlier detection shows what they are there for: every other request pays, for as long as the hang lasts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from ..integration.processes import Served
from .conftest import Upstream, running_envoy
from .replicas import HEALTH, Load, allowed_key, endpoints, port, statuses, two_replicas, warm

BEFORE, AFTER = 1.0, 1.0  # seconds of load before SIGSTOP, and after the stopped replica serves again
STOPPED = 5.0  # seconds the replica stays stopped, under load
OUT_BY = 2.0  # seconds after SIGSTOP by which the shipped file has taken it out (it takes ~0.3 s)
PAID_BOUND = 40  # requests that may pay the hang with the shipped file (measured: 10; 113-116 without)
BACK_BY = 5.0  # seconds after SIGCONT by which it serves again (the next health check, within 1 s)
HANG = 0.2  # seconds: an answer slower than this (or not a 200) paid the hang


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Served, Served, str]]:
    with two_replicas(database_url) as served:
        yield served


@pytest.mark.parametrize("drop", [pytest.param((), id="shipped"),
                                  pytest.param(HEALTH, id="without-health-checking-or-outlier-detection")])
async def test_a_hung_replica_is_taken_out_of_rotation_and_brought_back(
        replicas: tuple[Served, Served, str], upstream: Upstream, drop: tuple[str, ...],
        capsys: pytest.CaptureFixture[str]) -> None:
    hung, other, root = replicas
    key = await allowed_key(other, root)
    with running_envoy(upstream, endpoints((port(hung), port(other)), drop=drop)) as envoy:
        warm(envoy, key)
        assert envoy.endpoint(port(hung))["health_flags"] == "healthy"
        load = Load(envoy.port, key)
        with load.running():
            time.sleep(BEFORE)
            stopped = time.monotonic()
            hung.process.send_signal(signal.SIGSTOP)
            time.sleep(OUT_BY)
            sent_by_then = int(envoy.endpoint(port(hung))["rq_total"])
            time.sleep(STOPPED - OUT_BY)
            later = envoy.endpoint(port(hung))
            continued = time.monotonic()
            hung.process.send_signal(signal.SIGCONT)
            served = int(later["rq_success"])
            while int(envoy.endpoint(port(hung))["rq_success"]) == served:
                assert time.monotonic() < continued + BACK_BY, envoy.endpoint(port(hung))
                time.sleep(0.01)
            back = time.monotonic()
            time.sleep(AFTER)
        ejections = envoy.stat("cluster.keygate.outlier_detection.ejections_enforced_total")
        failed_checks = envoy.stat("cluster.keygate.health_check.failure")
    sent_later = int(later["rq_total"]) - sent_by_then
    paid = [answer for answer in load.between(stopped, continued) if answer.status != 200 or answer.seconds > HANG]
    with capsys.disabled():
        print(f"\n{'without ' + ' and '.join(drop) if drop else 'shipped'}: "
              f"{len(paid)} of {len(load.between(stopped, continued))} requests in {continued - stopped:.1f} s "
              f"stopped paid the hang {statuses(paid)}, the last sent "
              f"{max((answer.sent for answer in paid), default=stopped) - stopped:.2f} s after SIGSTOP; "
              f"{sent_later} calls sent to the stopped replica from {OUT_BY:g} s on (its flags then: "
              f"{later['health_flags']}); serving again {back - continued:.2f} s after SIGCONT; "
              f"{ejections} ejections, {failed_checks} failed health checks; "
              f"after: {statuses(load.between(back))}", end="")
    assert statuses(load.between(stopped, continued)).get(200), "the other replica answered nothing"
    if not drop:
        assert sent_later == 0, f"the stopped replica was still sent {sent_later} calls"
        assert len(paid) <= PAID_BOUND, statuses(paid)
        assert later["health_flags"] != "healthy"
    else:
        assert sent_later > 0 and len(paid) > PAID_BOUND, statuses(paid)
