"""Two `keygate serve` replicas as the two endpoints of the shipped Envoy's keygate cluster, and loops of
allowed requests through that Envoy that never pause, each answer kept with when it was sent and how long it
took: the harness of the tests that take one replica away under load (test_envoy_drain.py: SIGTERM,
test_envoy_hung.py: SIGSTOP).
"""

from __future__ import annotations

import collections
import copy
import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..integration.processes import Served, bootstrap, connect, start
from .conftest import Envoy, _http, ext_authz_grpc_service, keygate_cluster

LOOPS = 6  # client connections to Envoy, each sending an allowed request as soon as the last is answered


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # time.monotonic() when the request was sent
    seconds: float  # until its answer was read
    status: int  # 0: Envoy itself unreachable (never expected)


def statuses(answers: Iterable[Answer]) -> dict[int, int]:
    return dict(collections.Counter(answer.status for answer in answers))


@dataclass
class Load:
    """Loops of one allowed request after another through Envoy, every answer kept."""

    port: int
    key: str
    answers: list[Answer] = field(default_factory=list)

    @contextmanager
    def running(self, loops: int = LOOPS) -> Iterator[None]:
        """The loops run while the block does, and until every one has been answered after it."""
        stop, lock = threading.Event(), threading.Lock()

        def loop() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            path, headers = f"/api/v1/chatflows/{uuid.uuid4()}", {"Authorization": f"Bearer {self.key}"}
            seen: list[Answer] = []
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    conn.request("GET", path, headers=headers)
                    with conn.getresponse() as answer:
                        answer.read()
                        status = answer.status
                except (OSError, http.client.HTTPException):
                    status = 0
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                seen.append(Answer(sent, time.monotonic() - sent, status))
            conn.close()
            with lock:
                self.answers.extend(seen)

        threads = [threading.Thread(target=loop) for _ in range(loops)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        """The answers to requests sent from `start` until `end` (time.monotonic())."""
        return [answer for answer in self.answers if start <= answer.sent < end]


def port(served: Served) -> int:
    return int(served.address.rpartition(":")[2])


HEALTH = ("health_checks", "outlier_detection")  # what the keygate cluster follows its endpoints' health with


def endpoints(ports: Iterable[int], *, retry: bool = True,
              drop: Iterable[str] = ()) -> Callable[[dict[str, Any]], None]:
    """The keygate cluster with one endpoint per port and without the settings named in `drop` (e.g. HEALTH);
    without `retry`, the ext_authz retry policy removed."""
    def edit(config: dict[str, Any]) -> None:
        cluster = keygate_cluster(config)
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        group["lb_endpoints"] = []
        for each in ports:
            added = copy.deepcopy(endpoint)
            added["endpoint"]["address"]["socket_address"]["port_value"] = each
            group["lb_endpoints"].append(added)
        if not retry:
            del ext_authz_grpc_service(config)["retry_policy"]
        for name in drop:
            del cluster[name]
    return edit


@contextmanager
def two_replicas(database_url: str, *serve_args: str) -> Iterator[tuple[Served, Served, str]]:
    """Two `keygate serve --workers 1 *serve_args` processes on one database (one process each: a signal
    to it reaches the server itself), and its root key."""
    root = bootstrap(database_url)
    served = [start("--database-url", database_url, "--workers", "1", *serve_args) for _ in range(2)]
    try:
        yield served[0], served[1], root
    finally:
        for each in served:
            if each.process.poll() is None:
                each.process.kill()
                each.process.wait()
            each.log_path.unlink(missing_ok=True)


async def allowed_key(served: Served, root: str) -> str:
    """A new key that the loops' requests (GET /api/v1/chatflows/<id>) are allowed with."""
    client = connect(served, root)
    try:
        return (await client.create(name="loaded", permissions=["chatflows:view"])).api_key
    finally:
        await client.channel.close()


def warm(envoy: Envoy, key: str) -> None:
    """Until both replicas have answered through Envoy (round robin: consecutive requests alternate), so that
    no connection set-up or first database read is left to count against the 250 ms of a loaded call."""
    deadline, allowed = time.monotonic() + 10, 0
    while allowed < 6:
        assert time.monotonic() < deadline, "Envoy never reached both replicas"
        response = _http(envoy.port, "GET", f"/api/v1/chatflows/{uuid.uuid4()}", {"Authorization": f"Bearer {key}"})
        allowed = allowed + 1 if response.status == 200 else 0
