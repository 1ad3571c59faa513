"""Wiring: database, migrations, domain services, servicers, health, reflection, signals."""

from __future__ import annotations

import asyncio
import errno
import gc
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
import uvloop
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from . import logs, tls
from .admin import KeyAdmin
from .api import reflection
from .api.authz import AuthzServicer
from .api.boundary import Boundary
from .api.envoy import EnvoyAuthzServicer
from .api.flowise_keys import FlowiseKeyServicer
from .api.health import HealthServicer
from .api.keys import KeyServicer
from .api.watch import WatchServicer
from .authz import Authorizer
from .cache.keys import KeyCache
from .cache.listener import ChangeListener
from .config import Settings
from .domain import paging
from .domain.evaluators import Pipeline
from .limits.engine import LimitsMeter, Outage
from .metrics import Exporter, Metrics, count_unknown_methods
from .store import embedded
from .store.postgres import Store
from .store.replicas import Replicated
from .usage import UsageRecorder
from .v1 import authz_pb2, flowise_pb2, keys_pb2
from .workers import Supervisor

log = structlog.get_logger(__name__)

def _service(module: Any, name: str) -> ServiceDescriptor:
    return module.DESCRIPTOR.services_by_name[name]


KEY_SERVICE = _service(keys_pb2, "KeyService").full_name
FLOWISE_KEY_SERVICE = _service(flowise_pb2, "FlowiseApiKeyService").full_name  # KeyService's second door
SERVICE_NAMES = (
    KEY_SERVICE,
    FLOWISE_KEY_SERVICE,
    _service(authz_pb2, "AuthzService").full_name,
    _service(external_auth_pb2, "Authorization").full_name,
)
HEALTH_SERVICE = _service(health_pb2, "Health")
ACCESS_LOG_FLUSH_SECONDS = 0.1
QUIET_SECONDS = 0.25  # a drain serves on until no call has arrived for this long ...
LAME_DUCK_SECONDS = 5.0  # ... but at most this long (and a third of the grace)
PAGE_TOKEN_SECRET = "page_token"  # its row in server_secrets (migration 0003)


def refuse_taken_port(listen: str, *, reuse_port: bool = False) -> None:
    """Exit with one line if `listen` is a host:port another socket already listens on.

    A bind of our own, before grpc's: grpc's C core would first log a raw `add_port.cc` error line, which
    no setting read after start-up silences. SO_REUSEADDR as grpc sets it (a socket in TIME_WAIT after a
    restart is no conflict); SO_REUSEPORT only for workers sharing the port on purpose. A host name that
    does not resolve, or an address not on this machine, is refused here too, for the same reason.
    """
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SystemExit(f"keygate: cannot listen on {listen}: {exc.strerror} "
                         "(set --listen or KEYGATE_LISTEN)") from None
    except (OSError, UnicodeError):
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise SystemExit(f"keygate: cannot listen on {listen}: the address is in use "
                                     "(another keygate? set --listen or KEYGATE_LISTEN)") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise SystemExit(f"keygate: cannot listen on {listen}: no interface of this machine has that "
                                     "address (set --listen or KEYGATE_LISTEN)") from None


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded PostgreSQL's (started on demand in the data directory)."""
    return settings.database_url or embedded.start(settings.data_dir)


async def _key_source(store: Store, settings: Settings) -> Store | Replicated:
    """The primary's store, or with a read URL, replicas in front of it for the Check path's lookups.
    The replica's pool connects on first use: a replica down at start is skipped, not fatal."""
    read_url = settings.database.read_url
    if not read_url:
        return store
    replica = await Store.connect(read_url, settings.database, min_size=0, name="replica")
    return Replicated(store, replica)


@dataclass
class App:
    """A running keygate: everything `serve` starts, in the order `stop` undoes it."""

    store: Store
    source: Store | Replicated  # what the cache reads through: the store, or replicas in front of it
    cache: KeyCache
    listener: ChangeListener
    usage: UsageRecorder
    meter: LimitsMeter
    admin: KeyAdmin
    server: grpc.aio.Server
    boundary: Boundary
    health: HealthServicer
    port: int
    log_flusher: asyncio.Task[None]
    metrics: Metrics | None  # None: metrics off
    upstream_watch: asyncio.Task[None] | None  # follows the upstream credentials file, if one is set

    @classmethod
    async def start(cls, settings: Settings, url: str, *, reuse_port: bool = False) -> App:
        """Start serving. `reuse_port` only for workers sharing a port on purpose: otherwise a
        second server on a taken port must fail, not silently split its connections."""
        refuse_taken_port(settings.listen, reuse_port=reuse_port)
        tls_files = settings.tls_files()
        credentials = tls.server_credentials(tls_files) if tls_files else None
        catalog = settings.catalog()
        key_format = settings.key_format()
        routes, upstream = settings.routes(catalog), settings.upstream()
        store = await Store.connect(url, settings.database)
        await store.migrate(catalog)
        source = await _key_source(store, settings)
        cache = KeyCache(source, catalog, settings.cache)
        if isinstance(source, Replicated):
            source.follow(cache.replay)
        listener = ChangeListener(store, cache)
        usage = UsageRecorder(store)
        meter = LimitsMeter(store, Outage(settings.rate_limit_outage))
        authorizer = Authorizer(cache, catalog, key_format, usage, pipeline=Pipeline(meters=(meter,)))
        async with store.read() as tx:
            page_tokens = paging.PageTokens(await tx.server_secret(PAGE_TOKEN_SECRET))
        admin = KeyAdmin(store, catalog, key_format, page_tokens=page_tokens)

        server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
        health = HealthServicer(SERVICE_NAMES, needs_database=(KEY_SERVICE, FLOWISE_KEY_SERVICE))
        store.on_reachability(health.database_reachable)
        # Every service through the boundary, whose request parser turns bytes that are not the
        # method's message into INVALID_ARGUMENT (grpc's own would answer UNKNOWN and log a traceback).
        metrics = Metrics() if settings.metrics else None
        if metrics is not None:
            metrics.watch(cache, store, listener, usage, source if isinstance(source, Replicated) else None)
        boundary = Boundary(metrics)
        # The high-volume reads first (grpc asks each service's handler in turn whether it serves a call);
        # their allowed answers are counted, not logged (unless KEYGATE_ACCESS_LOG=all).
        boundary.register(server, AuthzServicer(authorizer, catalog), _service(authz_pb2, "AuthzService"),
                          quiet=frozenset({"Check", "BatchCheck"}))
        boundary.register(server, WatchServicer(authorizer, cache.feed), _service(authz_pb2, "AuthzService"))
        boundary.register(server, EnvoyAuthzServicer(authorizer, routes, upstream),
                          _service(external_auth_pb2, "Authorization"), quiet=frozenset({"Check"}))
        boundary.register(server, health, HEALTH_SERVICE, quiet=frozenset({"Check"}))
        boundary.register(server, KeyServicer(authorizer, admin), _service(keys_pb2, "KeyService"))
        boundary.register(server, FlowiseKeyServicer(authorizer, admin),
                          _service(flowise_pb2, "FlowiseApiKeyService"))
        reflection.enable((*SERVICE_NAMES, HEALTH_SERVICE.full_name), server, boundary)
        if metrics is not None:
            count_unknown_methods(server, metrics)  # last: it answers whatever no servicer serves
        try:
            port = tls.add_port(server, settings.listen, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            await store.close()
            raise SystemExit(f"keygate: cannot listen on {settings.listen} (address in use or invalid)")
        listener.start()
        await server.start()
        usage.start()
        log_flusher = asyncio.create_task(_flush_access_log(), name="access-log-flush")
        upstream_watch = None if upstream is None else asyncio.create_task(upstream.watch(), name="upstream-watch")
        log.info("serving", listen=settings.listen, port=port)
        return cls(store, source, cache, listener, usage, meter, admin, server, boundary, health, port, log_flusher,
                   metrics, upstream_watch)

    async def stop(self, grace: float) -> None:
        """Drain within `grace` seconds: every service NOT_SERVING first (Watch streams say so and end, as do
        WatchChanges streams), and
        calls still served until callers have gone; then no new connection or call is accepted, and calls
        in flight get the rest of the grace to finish (then they are cancelled); then the usage counted so
        far is written, the pool closed and the log flushed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.health.drain()
        self.cache.feed.close()  # WatchChanges streams end now (UNAVAILABLE: resubscribe elsewhere)
        await self._until_quiet(min(grace / 3, LAME_DUCK_SECONDS))
        await self.server.stop(max(0.0, deadline - loop.time()))
        self.log_flusher.cancel()
        if self.upstream_watch is not None:
            self.upstream_watch.cancel()
        await self.listener.stop()
        await self.usage.stop()
        await self.meter.close()  # the unused parts of this process's leases go back
        if isinstance(self.source, Replicated):
            await self.source.close()
        await self.store.close()
        logs.flush(final=True)

    async def _until_quiet(self, limit: float) -> None:
        """Serve on until no call has arrived for QUIET_SECONDS, for at most `limit` seconds. Meanwhile
        load balancers that follow health or endpoint lists move their traffic away. It matters because
        grpc's stop answers CANCELLED to every call it has received but not yet handed to keygate: on a
        busy server there are many, and callers do not retry CANCELLED as they retry UNAVAILABLE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        seen = self.boundary.started
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(QUIET_SECONDS, left))
            if self.boundary.started == seen:
                return
            seen = self.boundary.started


async def _flush_access_log() -> None:
    while True:
        await asyncio.sleep(ACCESS_LOG_FLUSH_SECONDS)
        logs.flush()


def run(settings: Settings) -> None:
    """`keygate serve`: prepare the database once, then serve here or in `settings.workers` processes."""
    refuse_taken_port(settings.listen)  # before anything is started, and whatever shares the port
    tls.check_server(settings.listen, settings.tls_files())
    settings.upstream()  # a credentials file that does not load fails now, in one line
    exporter = Exporter(settings.metrics) if settings.metrics else None  # likewise: a taken port fails now
    url = database_url(settings)
    uvloop.run(_prepare(settings, url))

    def ready(port: int) -> None:
        announce(settings, port, exporter)

    if settings.workers == 1:
        def export(metrics: Metrics) -> None:
            if exporter is not None:
                exporter.show(metrics.snapshot)

        uvloop.run(serve_until_signalled(settings, url, on_metrics=export, on_ready=ready))
    else:
        Supervisor(settings, url, serve_until_signalled, on_ready=ready, exporter=exporter).run()


async def _prepare(settings: Settings, url: str) -> None:
    """Migrations, and on an embedded database's first start a root key, printed once."""
    catalog = settings.catalog()
    store = await Store.connect(url, settings.database, min_size=1, max_size=1)
    try:
        await store.migrate(catalog)
        admin = KeyAdmin(store, catalog, settings.key_format())
        if not settings.database_url and not await admin.has_root_key():
            _, api_key = await admin.create_root_key()
            _print_first_start(api_key)
    finally:
        await store.close()


async def serve_until_signalled(settings: Settings, url: str, *, on_ready: Callable[[int], None],
                                on_metrics: Callable[[Metrics], None] | None = None, reuse_port: bool = False,
                                supervisor_gone: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM, or (a worker) until `supervisor_gone`, a file descriptor that turns
    readable when the supervisor has died; then drain within the shutdown grace. `on_metrics` is handed the
    server's metrics (when they are on) to export: here, or to the supervisor. Shaped as `workers.Serve`."""
    app = await App.start(settings, url, reuse_port=reuse_port)
    if on_metrics is not None and app.metrics is not None:
        on_metrics(app.metrics)
    # Everything built at start-up (modules, protobuf descriptors, the catalog) lives as long as the
    # process: move it out of the collector's sight, so collections scan only what requests allocate.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if supervisor_gone is not None:
        def orphaned() -> None:
            loop.remove_reader(supervisor_gone)
            log.warning("supervisor_gone")
            stop.set()

        loop.add_reader(supervisor_gone, orphaned)
    try:
        on_ready(app.port)  # only now: a SIGTERM right after the announcement must stop us cleanly
        await stop.wait()
        log.info("stopping", grace=settings.shutdown_grace)
        await app.stop(settings.shutdown_grace)
        log.info("stopped")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if supervisor_gone is not None:
            loop.remove_reader(supervisor_gone)


def announce(settings: Settings, port: int, exporter: Exporter | None) -> None:
    host = settings.listen.rpartition(":")[0] or "127.0.0.1"
    workers = f", {settings.workers} worker processes" if settings.workers > 1 else ""
    services = "KeyService, FlowiseApiKeyService, AuthzService, Envoy ext_authz, health, reflection"
    security = "" if settings.tls_cert is None else " with mTLS" if settings.tls_client_ca else " with TLS"
    metrics = f"; metrics on http://{exporter.address}/metrics" if exporter is not None else "; metrics off"
    print(f"keygate is listening on {host}:{port}{security} (gRPC: {services}{workers}){metrics}", flush=True)


def _print_first_start(api_key: str) -> None:
    """Straight to the console, never through the logger: the one time a key is shown."""
    print(
        "\n"
        "  First start: created a root key. It is shown this once and stored only as a digest.\n\n"
        f"    {api_key}\n\n"
        "  Use it from the shell (environment variables, never command-line flags):\n"
        "    export KEYGATE_API_KEY='<the key above>'\n"
        f"    {command_name()} keys create --name my-app --workspace ws1 --permission chatflows:view\n",
        file=sys.stdout,
        flush=True,
    )


def command_name() -> str:
    """How to run this keygate from the user's shell: `keygate` when that is on PATH and is this one, else
    this one's path, relative when below the current directory (`.venv/bin/keygate` after `make run`)."""
    script = Path(sys.argv[0]).absolute()
    if script.name != "keygate" or not script.is_file():
        script = Path(sys.executable).absolute().with_name("keygate")
    on_path = shutil.which("keygate")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "keygate"
    try:
        relative = script.relative_to(Path.cwd())
    except ValueError:
        return str(script)
    return str(relative) if relative.parent != Path() else f"./{relative}"
