"""`python -m bench.client_cache [--quick]` (and section 5 of `make bench`): keygate.client's local cache.

1. a check answered by the local cache vs the same check asked of keygate (AuthzService.Check, one at a
   time over one channel) by an Authorizer without one, in the same process, keygate otherwise idle:
   p50 of each, and their ratio;
2. revocation: a key's decision cached by the client, then DeleteKey; the time from DeleteKey's return
   (its commit is before that) to the client's check refusing the key, over `revocations` keys one after
   another, while another process keeps keygate busy with Checks (`LOAD_STREAMS` in flight).
The client subscribes with a workspace key holding apikeys:view, as a service would.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path
from typing import Any

import grpc

from keygate.client import Authorizer, ClientSettings, LocalCache
from keygate.client.cache import SETTLE
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2, keys_pb2_grpc

from . import postgres, report, servers
from .limits_engine import root_key
from .stats import median, percentile

WORKSPACE = "bench"
RESOURCE, ACTION = "chatflows/bench-flow", "predictions:create"
LOAD_STREAMS = 8  # Checks in flight from the load process
LOAD_WARM_UP = 2.0  # seconds the load runs before the first revocation (its process starts meanwhile)
SECTION = "5. client library's local cache"
NOTE = ("- Client cache: p50 of a check answered by keygate.client's local cache vs the same Check asked of an "
        "idle keygate one at a time; revocation: DeleteKey's return to the caching client's check refusing the key, "
        f"keys revoked one after another while another process keeps {LOAD_STREAMS} Checks in flight.")
POLL_SECONDS = 0.0002  # between two checks of a key being revoked: the event must get the loop meanwhile


@dataclass(frozen=True, slots=True)
class Measured:
    cached_p50_us: float
    remote_p50_us: float
    revocation_p50_ms: float
    revocation_p99_ms: float
    revocations: int
    load_rps: float

    @property
    def ratio(self) -> float:
        return self.remote_p50_us / self.cached_p50_us

    def figures(self, workers: int) -> list[report.Figure]:
        section = f"{SECTION}, {workers} worker(s)"
        return [
            report.Figure(section, "Check answered by the client's local cache: p50", f"{self.cached_p50_us:.2f} µs"),
            report.Figure(section, "the same Check asked of keygate, one at a time: p50",
                          f"{self.remote_p50_us:.0f} µs"),
            report.Figure(section, "ratio remote / local cache", f"x{self.ratio:,.0f}", "≥ x100", self.ratio >= 100),
            report.Figure(section, f"DeleteKey's return to the client refusing the key: p50 / p99 over "
                                   f"{self.revocations} revocations, keygate under Check load "
                                   f"({self.load_rps:,.0f} calls/s)",
                          f"{self.revocation_p50_ms:.1f} / {self.revocation_p99_ms:.1f} ms", "p99 < 1 s",
                          self.revocation_p99_ms < 1000),
        ]


def _load(target: str, api_key: str, stop: StopEvent, calls: Any) -> None:
    """Checks, LOAD_STREAMS at a time, until `stop`; the number made goes to `calls`."""

    async def run() -> None:
        request = authz_pb2.CheckRequest(api_key=api_key, resource=RESOURCE, action=ACTION)
        async with grpc.aio.insecure_channel(target) as channel:
            check = authz_pb2_grpc.AuthzServiceStub(channel).Check
            made = 0

            async def stream() -> None:
                nonlocal made
                while not stop.is_set():
                    await check(request, timeout=10)
                    made += 1

            await asyncio.gather(*(stream() for _ in range(LOAD_STREAMS)))
            calls.value = made

    asyncio.run(run())


def _per_call_us(samples: list[float]) -> float:
    return median(samples) * 1e6


async def _create(keys: keys_pb2_grpc.KeyServiceStub, root: str, name: str,
                  permissions: list[str]) -> keys_pb2.CreateKeyResponse:
    return await keys.CreateKey(keys_pb2.CreateKeyRequest(name=name, workspace_id=WORKSPACE, permissions=permissions),
                                metadata=(("authorization", f"Bearer {root}"),))


async def _measure(target: str, root: str, calls: int, revocations: int,
                   load: Callable[[], AbstractContextManager[object]]) -> tuple[float, float, list[float]]:
    """(cached p50 µs, remote p50 µs, both on an idle keygate; revocation times in seconds, under `load`)."""
    async with grpc.aio.insecure_channel(target) as channel:
        keys = keys_pb2_grpc.KeyServiceStub(channel)
        watcher = (await _create(keys, root, "watcher", ["apikeys:view"])).api_key
        made = [await _create(keys, root, f"victim-{n}", [ACTION]) for n in range(revocations)]
        victims = [m.api_key for m in made]
        settings = ClientSettings(server=target, timeout=5.0)
        async with Authorizer(settings, cache=LocalCache(watch_key=watcher, max_entries=10_000, ttl=60)) as cached, \
                Authorizer(settings) as remote:
            await cached.check(victims[0], RESOURCE, ACTION)  # opens the channel and the stream
            decisions = cached.decisions
            assert decisions is not None
            while not decisions.live:
                await asyncio.sleep(0.01)
            await asyncio.sleep(SETTLE + 0.1)  # the keys' creation events and the first resync settled
            for key in victims:
                assert (await cached.check(key, RESOURCE, ACTION)).allowed
            local, asked = [], []
            for _ in range(calls):
                started = time.perf_counter()
                await cached.check(victims[0], RESOURCE, ACTION)
                local.append(time.perf_counter() - started)
            for _ in range(min(calls, 2000)):
                started = time.perf_counter()
                await remote.check(victims[0], RESOURCE, ACTION)
                asked.append(time.perf_counter() - started)
            took = []
            with load():
                await _revoke(keys, root, cached, made, took)
    return _per_call_us(local), _per_call_us(asked), took


async def _revoke(keys: keys_pb2_grpc.KeyServiceStub, root: str, cached: Authorizer,
                  made: list[keys_pb2.CreateKeyResponse], took: list[float]) -> None:
    """Delete each key in turn, timing until `cached` refuses it."""
    for victim in made:
        await keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=victim.key.id),
                             metadata=(("authorization", f"Bearer {root}"),))
        deleted = time.perf_counter()
        while (await cached.check(victim.api_key, RESOURCE, ACTION)).allowed:
            await asyncio.sleep(POLL_SECONDS)
        took.append(time.perf_counter() - deleted)


def measure(url: str, workers: int, workdir: Path, *, calls: int, revocations: int) -> Measured:
    root = asyncio.run(root_key(url))
    probe = authz_pb2.CheckRequest(api_key=root, action="chatflows:view")
    rates: list[float] = []
    with servers.running(servers.start_keygate(url, workers, True, workdir, "client-cache"), probe) as server:
        load_key = asyncio.run(_load_key(server.target, root))

        @contextmanager
        def load() -> Iterator[None]:
            """Another process keeps keygate busy with Checks meanwhile; its rate goes to `rates`."""
            context = multiprocessing.get_context("spawn")
            stop, made = context.Event(), context.Value("q", 0)
            loader = context.Process(target=_load, args=(server.target, load_key, stop, made), daemon=True)
            loader.start()
            time.sleep(LOAD_WARM_UP)
            started = time.perf_counter()
            try:
                yield
            finally:
                stop.set()
                loader.join(timeout=30)
                if loader.is_alive():
                    loader.kill()
            rates.append(made.value / (time.perf_counter() - started + LOAD_WARM_UP))

        cached_us, remote_us, took = asyncio.run(_measure(server.target, root, calls, revocations, load))
    return Measured(cached_us, remote_us, percentile(took, 50) * 1000, percentile(took, 99) * 1000, len(took),
                    rates[0])


async def _load_key(target: str, root: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        return (await _create(keys_pb2_grpc.KeyServiceStub(channel), root, "load", [ACTION])).api_key


def sizes(quick: bool) -> dict[str, int]:
    """Checks timed from the local cache, and revocations measured (≥ 100: the goal's sample)."""
    return {"calls": 5_000 if quick else 50_000, "revocations": 100 if quick else 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--workers", type=int, default=1, help="keygate worker processes (default 1)")
    args = parser.parse_args()
    os.environ.setdefault("KEYGATE_METRICS", "127.0.0.1:0")  # any free port: the default may be taken
    with tempfile.TemporaryDirectory(prefix="keygate-bench-client-cache-") as root:
        with postgres.embedded(Path(root)) as pg:
            url = pg.create_database("bench_client_cache")
            measured = measure(url, args.workers, Path(root), **sizes(args.quick))
    print(report.render("keygate client cache", [], measured.figures(args.workers), [NOTE]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
