"""Prometheus metrics: plain counters on the hot path, turned into metric families only when scraped.

A prometheus_client Histogram or Counter takes a lock per observation; on the Check path, where a
whole call costs some tens of microseconds of Python, that would be a visible share. So each process
keeps ints in dictionaries and lists (a histogram is a list of bucket counts, indexed by a bisect on
fixed bounds), and everything else (cache sizes, the pool, the write-behind queue, the listener) is
read from the objects themselves at scrape time. A scrape builds a `Snapshot` (plain, picklable,
additive), which `Exporter` serves through a prometheus_client collector.

With `serve --workers N` the supervisor serves /metrics: at each scrape it asks every worker for its
snapshot over a pipe and sums them (`Fleet`). A worker that dies leaves its last counters behind,
so totals never go backwards when it is restarted.

Labels are bounded by construction: methods are those registered at start-up, and every other method
is counted as `unknown` (`count_unknown_methods`), codes are gRPC status names and keygate's decision codes, and
cache, state and kind are fixed words. Nothing a caller sends becomes a label.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, TypeVar

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .domain.errors import InvalidArgument

if TYPE_CHECKING:
    import asyncio

    from .cache.keys import KeyCache
    from .cache.listener import ChangeListener
    from .store.postgres import Store
    from .store.replicas import Replicated
    from .usage import UsageRecorder

DEFAULT_ADDRESS = "127.0.0.1:9464"
SETTING = "KEYGATE_METRICS (--metrics)"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WORKER_ANSWER_TIMEOUT = 1.0  # seconds a scrape waits for the workers' snapshots, all together
# The methods whose latency is a histogram by decision code, and the `api` label each gets.
DECISION_APIS = {
    "/keygate.v1.AuthzService/Check": "Check",
    "/keygate.v1.AuthzService/BatchCheck": "BatchCheck",
    "/envoy.service.auth.v3.Authorization/Check": "ext_authz",
}
# What the servicers of DECISION_APIS decided for this call (a decision Code's value, or a word of the
# Envoy servicer's); the boundary falls back to the gRPC status when a call ended without one.
# Strings, not enum members: an Enum's __hash__ is a Python call, a str's hash is cached.
decision: ContextVar[str] = ContextVar("decision", default="")

Labels = tuple[str, ...]
_Value = TypeVar("_Value")


@dataclass(frozen=True, slots=True)
class Family:
    kind: str  # counter, gauge or histogram
    help: str
    labels: Labels = ()


FAMILIES: dict[str, Family] = {
    "keygate_rpcs": Family("counter", "Unary RPCs answered, by method and gRPC status code.", ("method", "code")),
    "keygate_decision_duration_seconds": Family(
        "histogram", "Time to answer Check, BatchCheck and Envoy ext_authz, by decision code "
        "(BatchCheck: the first refused item's code, OK if every item is allowed).", ("api", "decision")),
    "keygate_cache_hits": Family("counter", "Lookups answered from memory.", ("cache",)),
    "keygate_cache_misses": Family("counter", "Lookups memory could not answer (keys: unknown keys included).",
                                   ("cache",)),
    "keygate_cache_evictions": Family("counter", "Entries evicted because the cache was full.", ("cache",)),
    "keygate_cache_entries": Family("gauge", "Entries held, summed over processes.", ("cache",)),
    "keygate_invalidation_lag_seconds": Family(
        "histogram", "From a change's NOTIFY (inside its committing transaction) to its application to this "
        "process's cache; writer and reader wall clocks, negative skew counted as 0."),
    "keygate_change_listener_down": Family("gauge", "Processes whose change listener is not listening "
                                           "(their cache answers only for its ttl)."),
    "keygate_db_pool_connections": Family("gauge", "Pooled database connections, by state.", ("state",)),
    "keygate_db_pool_max_connections": Family("gauge", "Largest size of the database pools, summed."),
    "keygate_db_pool_acquire_waits": Family("counter", "Connection acquisitions that found no idle connection."),
    "keygate_db_pool_acquire_timeouts": Family("counter", "Connection acquisitions that timed out."),
    "keygate_db_errors": Family("counter", "Database calls failed by the database being unreachable, by kind.",
                                ("kind",)),
    "keygate_usage_pending_keys": Family("gauge", "Keys whose usage (last_used_time, usage_count) awaits its "
                                         "write-behind flush."),
    "keygate_replica_reads": Family("counter", "Check-path lookups a read replica answered."),
    "keygate_replica_fallbacks": Family(
        "counter", "Check-path lookups the primary answered although a read replica is set, by reason.",
        ("reason",)),
    "keygate_replica_unreachable": Family("gauge", "Processes whose read replica is unreachable (the primary "
                                          "answers their lookups)."),
    "keygate_processes": Family("gauge", "Serving processes that answered this scrape."),
    "keygate_worker_restarts": Family("counter", "Worker processes the supervisor restarted after they died."),
}
CACHES = ("keys", "negative", "bindings", "decisions")
DB_ERROR_KINDS = ("timeout", "connection_lost", "other")


class Histogram:
    """Bucket counts (the last for values above every bound) and their sum: observing is a bisect and two
    additions, no lock (one event loop per process)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


@dataclass
class Snapshot:
    """One process's (or the sum of several processes') values: additive, picklable."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], tuple[tuple[float, ...], list[int], float]] = field(default_factory=dict)

    def count(self, name: str, value: float, *labels: str) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + value

    def gauge(self, name: str, value: float, *labels: str) -> None:
        key = (name, labels)
        self.gauges[key] = self.gauges.get(key, 0) + value

    def histogram(self, name: str, histogram: Histogram, *labels: str) -> int:
        """Add `histogram` in; how many values it held (the copy taken: the loop may be counting on)."""
        counts = list(histogram.counts)
        self._histogram((name, labels), histogram.bounds, counts, histogram.sum)
        return sum(counts)

    def _histogram(self, key: tuple[str, Labels], bounds: tuple[float, ...], counts: list[int], total: float) -> None:
        held = self.histograms.get(key)
        if held is not None:
            counts = [a + b for a, b in zip(held[1], counts, strict=True)]
            total += held[2]
        self.histograms[key] = (bounds, counts, total)

    def add(self, other: Snapshot, *, gauges: bool = True) -> None:
        """Add `other` in; without its gauges for a process that is gone (its counts stay, its state does not)."""
        for (name, labels), value in other.counters.items():
            self.count(name, value, *labels)
        if gauges:
            for (name, labels), value in other.gauges.items():
                self.gauge(name, value, *labels)
        for key, (bounds, counts, total) in other.histograms.items():
            self._histogram(key, bounds, counts, total)

    def families(self) -> Iterator[Metric]:
        """The prometheus_client metric families, every family of FAMILIES even when it has no sample yet."""
        for name, family in FAMILIES.items():
            if family.kind == "counter":
                counter = CounterMetricFamily(name, family.help, labels=family.labels)
                for labels, value in _samples(self.counters, name):
                    counter.add_metric(labels, value)
                yield counter
            elif family.kind == "gauge":
                gauge = GaugeMetricFamily(name, family.help, labels=family.labels)
                for labels, value in _samples(self.gauges, name):
                    gauge.add_metric(labels, value)
                yield gauge
            else:
                histogram = HistogramMetricFamily(name, family.help, labels=family.labels)
                for labels, (bounds, counts, total) in _samples(self.histograms, name):
                    cumulative, buckets = 0, []
                    for bound, n in zip((*map(_le, bounds), "+Inf"), counts, strict=True):
                        cumulative += n
                        buckets.append((bound, float(cumulative)))
                    histogram.add_metric(labels, buckets, total)
                yield histogram


def _le(bound: float) -> str:
    return repr(float(bound))


def _samples(values: Mapping[tuple[str, Labels], _Value], name: str) -> list[tuple[Labels, _Value]]:
    """One family's samples in label order (labels are unique within a family: dictionary keys)."""
    return sorted(((labels, value) for (family, labels), value in values.items() if family == name),
                  key=lambda sample: sample[0])


Recorder = Callable[[grpc.StatusCode, str, float], None]


class Metrics:
    """One process's metrics: RPC counters fed by the boundary, and the parts read at scrape time."""

    def __init__(self) -> None:
        self._rpcs: dict[str, dict[str, int]] = {}  # method -> gRPC status name -> calls
        # api -> (method, latencies of its OK answers by decision, of its other answers by decision or
        # status): a decision method's OK calls are counted only by their histograms, which the scrape sums.
        self._latency: dict[str, tuple[str, dict[str, Histogram], dict[str, Histogram]]] = {}
        self._readers: list[Callable[[Snapshot], None]] = []

    def recorder(self, method: str) -> Recorder:
        """What the boundary calls once per unary call of `method` with its status, what the servicer
        decided (`decision`, "" for none) and its duration in seconds (the boundary reads the clock once
        for this and its log line).

        Status codes are counted by `_name_` (the documented attribute behind Enum.name, without the
        property's Python-level call), for the same reason `decision` holds strings. A decision method's
        OK answer (the common case) costs one dictionary lookup: its histogram by decision; the first
        bucket is tested before any bisect (in-process answers take well under its 100 us)."""
        counts = self._rpcs.setdefault(method, {})
        api = DECISION_APIS.get(method)
        if api is None:
            def count(code: grpc.StatusCode, decided: str, elapsed: float) -> None:
                name = code._name_
                counts[name] = counts.get(name, 0) + 1

            return count
        _, answered, failed = self._latency.setdefault(api, (method, {}, {}))
        bounds, first, ok = LATENCY_BUCKETS, LATENCY_BUCKETS[0], grpc.StatusCode.OK

        def count_and_time(code: grpc.StatusCode, decided: str, elapsed: float) -> None:
            if code is ok:
                histogram = answered.get(decided)
                if histogram is None:
                    histogram = answered[decided] = Histogram(bounds)
            else:
                name = code._name_
                counts[name] = counts.get(name, 0) + 1
                label = decided or name
                histogram = failed.get(label)
                if histogram is None:
                    histogram = failed[label] = Histogram(bounds)
            histogram.counts[0 if elapsed <= first else bisect_left(bounds, elapsed)] += 1
            histogram.sum += elapsed

        return count_and_time

    def watch(self, cache: KeyCache, store: Store, listener: ChangeListener, usage: UsageRecorder,
              replicas: Replicated | None = None) -> None:
        """Read these parts of a running server at each scrape (`replicas`: when a read URL is set)."""

        def read(snapshot: Snapshot) -> None:
            sizes = cache.sizes()
            hits, misses, evictions = dict(cache.hits), dict(cache.misses), cache.evictions()
            for name in CACHES:
                snapshot.count("keygate_cache_hits", hits[name], name)
                snapshot.count("keygate_cache_misses", misses[name], name)
                snapshot.count("keygate_cache_evictions", evictions[name], name)
                snapshot.gauge("keygate_cache_entries", sizes[name], name)
            snapshot.histogram("keygate_invalidation_lag_seconds", cache.lag)
            snapshot.gauge("keygate_change_listener_down", 0 if listener.connected.is_set() else 1)
            in_use, idle, largest = store.pool_sizes()
            snapshot.gauge("keygate_db_pool_connections", in_use, "in_use")
            snapshot.gauge("keygate_db_pool_connections", idle, "idle")
            snapshot.gauge("keygate_db_pool_max_connections", largest)
            snapshot.count("keygate_db_pool_acquire_waits", store.acquire_waits)
            snapshot.count("keygate_db_pool_acquire_timeouts", store.acquire_timeouts)
            errors = dict(store.errors)
            for kind in DB_ERROR_KINDS:
                snapshot.count("keygate_db_errors", errors[kind], kind)
            snapshot.gauge("keygate_usage_pending_keys", usage.pending)
            if replicas is not None:
                snapshot.count("keygate_replica_reads", replicas.replica_reads)
                for reason, n in list(replicas.fallbacks.items()):  # a fixed set of words (store/replicas.py)
                    snapshot.count("keygate_replica_fallbacks", n, reason)
                snapshot.gauge("keygate_replica_unreachable", 0 if replicas.replica.reachable else 1)

        self._readers.append(read)

    def snapshot(self) -> Snapshot:
        """Copies of the counters (each a C-level copy: safe from the exporter's thread while the loop runs)."""
        snapshot = Snapshot()
        for method, counts in list(self._rpcs.items()):
            for code, n in list(counts.items()):
                snapshot.count("keygate_rpcs", n, method, code)
        for api, (method, answered, failed) in list(self._latency.items()):
            for decided, histogram in list(answered.items()):
                observed = snapshot.histogram("keygate_decision_duration_seconds", histogram, api, decided or "OK")
                snapshot.count("keygate_rpcs", observed, method, "OK")
            for label, histogram in list(failed.items()):
                snapshot.histogram("keygate_decision_duration_seconds", histogram, api, label)
        for read in self._readers:
            read(snapshot)
        snapshot.gauge("keygate_processes", 1)
        return snapshot


UNKNOWN_METHOD = "unknown"


class _UnknownMethods(grpc.GenericRpcHandler):
    """Consulted last, for a method no servicer serves: UNIMPLEMENTED, as grpc would answer, but counted."""

    def __init__(self, metrics: Metrics) -> None:
        record = metrics.recorder(UNKNOWN_METHOD)

        async def unimplemented(requests: object, context: grpc.aio.ServicerContext) -> None:
            record(grpc.StatusCode.UNIMPLEMENTED, "", 0.0)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

        # Streaming, and no request read: a client that streams, or sends nothing yet, is answered at once.
        self._handler: grpc.RpcMethodHandler = grpc.stream_stream_rpc_method_handler(unimplemented)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handler


def count_unknown_methods(server: grpc.aio.Server, metrics: Metrics) -> None:
    """After every servicer is registered: calls to any other method count under method="unknown"."""
    server.add_generic_rpc_handlers((_UnknownMethods(metrics),))


def parse_address(raw: str) -> str | None:
    """`host:port` to serve /metrics on, or None for `off`; InvalidArgument naming the setting otherwise."""
    text = raw.strip()
    if text.lower() == "off":
        return None
    host, _, port = text.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(SETTING, f"must be host:port (default {DEFAULT_ADDRESS}) or off, not {raw!r}")
    return text


class _Collector:
    def __init__(self) -> None:
        self.source: Callable[[], Snapshot] = Snapshot

    def collect(self) -> Iterator[Metric]:
        return self.source().families()


class Exporter:
    """/metrics over HTTP in a daemon thread, bound at start-up so that a taken port fails at once."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._collector = _Collector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector)
        try:
            self._server, _ = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        except OSError as exc:
            reason = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or type(exc).__name__
            raise SystemExit(f"keygate: cannot serve metrics on {address}: {reason} "
                             f"(set --metrics or KEYGATE_METRICS, or off)") from None
        self.address = f"{host}:{self._server.server_port}"

    def show(self, source: Callable[[], Snapshot]) -> None:
        self._collector.source = source

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def answer_scrapes(loop: asyncio.AbstractEventLoop, pipe: Connection, metrics: Metrics) -> None:
    """In a worker: answer each of the supervisor's requests (a sequence number) with this process's snapshot."""

    def answer() -> None:
        try:
            sequence = pipe.recv()
            pipe.send((sequence, metrics.snapshot()))
        except (EOFError, OSError):  # the supervisor is gone
            loop.remove_reader(pipe.fileno())

    loop.add_reader(pipe.fileno(), answer)


class Fleet:
    """The supervisor's side: one pipe per worker slot, the last snapshot each answered, and what
    workers that died had counted."""

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._pipes: list[Connection | None] = [None] * slots
        self._last: list[Snapshot | None] = [None] * slots
        self._retired = Snapshot()
        self._sequence = 0

    def attach(self, slot: int, pipe: Connection) -> None:
        """A new worker in `slot`: keep what the one before it counted."""
        with self._lock:
            old, last = self._pipes[slot], self._last[slot]
            if old is not None:
                old.close()
                self._retired.count("keygate_worker_restarts", 1)
            if last is not None:
                self._retired.add(last, gauges=False)
            self._pipes[slot], self._last[slot] = pipe, None

    def collect(self) -> Snapshot:
        """Every worker's current snapshot (its last one if it does not answer in time), summed."""
        with self._lock:
            self._sequence += 1
            asked = []
            for slot, pipe in enumerate(self._pipes):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.send(self._sequence)
                        asked.append(slot)
            deadline = time.monotonic() + WORKER_ANSWER_TIMEOUT
            for slot in asked:
                self._receive(slot, deadline)
            total = Snapshot()
            total.add(self._retired)
            for last in self._last:
                if last is not None:
                    total.add(last)
            return total

    def _receive(self, slot: int, deadline: float) -> None:
        pipe = self._pipes[slot]
        assert pipe is not None
        with contextlib.suppress(EOFError, OSError):
            while pipe.poll(max(0.0, deadline - time.monotonic())):
                sequence, snapshot = pipe.recv()  # earlier answers, late for their scrape, come first
                self._last[slot] = snapshot
                if sequence == self._sequence:
                    return
