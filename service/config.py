"""Settings from flags and environment, and the operator's catalog extension file."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .cache.keys import CacheSettings
from .domain.errors import InvalidArgument
from .domain.keys import DEFAULT_PREFIX, KeyFormat
from .domain.permissions import Catalog
from .domain.routes import RouteTable
from .logs import ACCESS_POLICIES
from .metrics import DEFAULT_ADDRESS as DEFAULT_METRICS
from .metrics import parse_address
from .store.failover import check_primary_url, check_url
from .store.postgres import POOLERS, DatabaseSettings
from .tls import ServerFiles
from .upstream import UpstreamCredentials

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".keygate")
DEFAULT_SHUTDOWN_GRACE = 15.0  # seconds calls in flight may take to finish after SIGTERM
LOG_LEVELS = ("debug", "info", "warning", "error")
# The largest value each kind of number setting takes (see `_number`).
HOUR, DAY, WEEK = 3_600, 86_400, 604_800  # seconds: timeouts and the drain; the cache ttl; the outage grace
MOST_WORKERS = 256
MOST_ENTRIES = 100_000_000  # a cache's entries: tens of GB, far past any machine keygate runs on
MOST_LOOKUPS = 1_000_000  # unknown keys confirmed a second
RATE_LIMIT_OUTAGES = ("closed", "open")  # the first is the default


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as an operator sees it: an environment variable, the flag that overrides it, and the
    Settings attribute it fills (dotted). cli.py builds the flags from OPTIONS and lays them over the
    environment, so a flag and its variable are parsed and checked by the same code in from_env."""

    env: str
    flag: str
    attr: str
    help: str
    default: str = ""  # how to describe a default that is not a plain value (computed, or "none: ...")
    storage: bool = False  # also a flag of `migrate` and `bootstrap`, which open the database

    def describe_default(self, defaults: Settings) -> str:
        """The default as --help and the README's settings table show it."""
        if self.default:
            return self.default
        value: object = defaults
        for part in self.attr.split("."):
            value = getattr(value, part)
        if isinstance(value, bool):
            return "on" if value else "off"
        return f"{value:g}" if isinstance(value, float) else str(value)


OPTIONS: tuple[Option, ...] = (
    Option("KEYGATE_LISTEN", "--listen", "listen", "gRPC address, host:port"),
    Option("DATABASE_URL", "--database-url", "database_url",
           "PostgreSQL URL (prefer the variable: a password in a flag shows in `ps`)",
           default="none: the embedded PostgreSQL", storage=True),
    Option("KEYGATE_DATA_DIR", "--data-dir", "data_dir", "the embedded PostgreSQL's directory", storage=True),
    Option("KEYGATE_KEY_PREFIX", "--key-prefix", "key_prefix", "prefix of the keys issued", storage=True),
    Option("KEYGATE_CATALOG", "--catalog", "catalog_file", "YAML file adding permission categories",
           default="none: the built-in catalog", storage=True),
    Option("KEYGATE_ROUTES", "--routes", "routes_file", "YAML file of Envoy route rules",
           default="none: the built-in Flowise rules"),
    Option("KEYGATE_UPSTREAM_CREDENTIALS", "--upstream-credentials", "upstream_credentials",
           "secret YAML file: workspace id (or \"*\") -> the Flowise API key set on allowed requests",
           default="none: no credential is set"),
    Option("KEYGATE_LOG_LEVEL", "--log-level", "log_level", "debug, info, warning or error", storage=True),
    Option("KEYGATE_ACCESS_LOG", "--access-log", "access_log",
           "which calls get a log line: denials (refusals, errors, admin calls; bounded), all, or off"),
    Option("KEYGATE_WORKERS", "--workers", "workers", "processes sharing the port",
           default="one per two cores"),
    Option("KEYGATE_METRICS", "--metrics", "metrics", "host:port serving Prometheus metrics at /metrics, or off",
           default="127.0.0.1:9464"),
    Option("KEYGATE_SHUTDOWN_GRACE", "--shutdown-grace", "shutdown_grace",
           "seconds calls in flight may take to finish after SIGTERM"),
    Option("KEYGATE_TLS_CERT", "--tls-cert", "tls_cert", "PEM certificate chain: serve TLS (with --tls-key)",
           default="none: plaintext"),
    Option("KEYGATE_TLS_KEY", "--tls-key", "tls_key", "PEM private key of --tls-cert", default="none"),
    Option("KEYGATE_TLS_CLIENT_CA", "--tls-client-ca", "tls_client_ca",
           "PEM CA: require client certificates it signed (mTLS)", default="none: no client certificates"),
    Option("KEYGATE_CACHE_MAX_KEYS", "--cache-max-keys", "cache.max_keys", "keys the cache holds"),
    Option("KEYGATE_CACHE_MAX_NEGATIVE", "--cache-max-negative", "cache.max_negative",
           "unknown keys the cache remembers"),
    Option("KEYGATE_CACHE_MAX_BINDINGS", "--cache-max-bindings", "cache.max_bindings",
           "resource bindings the cache holds"),
    Option("KEYGATE_CACHE_MAX_DECISIONS", "--cache-max-decisions", "cache.max_decisions",
           "decisions the cache remembers"),
    Option("KEYGATE_CACHE_TTL", "--cache-ttl", "cache.ttl", "seconds a cache entry answers without a read"),
    Option("KEYGATE_OUTAGE_GRACE", "--outage-grace", "cache.outage_grace",
           "further seconds an entry answers while PostgreSQL is unreachable"),
    Option("KEYGATE_UNKNOWN_KEY_LOOKUPS", "--unknown-key-lookups", "cache.unknown_key_lookups",
           "lookups a second of keys the known-keys filter refuses"),
    Option("KEYGATE_DB_CONNECT_TIMEOUT", "--db-connect-timeout", "database.connect_timeout",
           "seconds to open a database connection", storage=True),
    Option("KEYGATE_DB_ACQUIRE_TIMEOUT", "--db-acquire-timeout", "database.acquire_timeout",
           "seconds to wait for a pooled connection"),
    Option("KEYGATE_DB_STATEMENT_TIMEOUT", "--db-statement-timeout", "database.statement_timeout",
           "seconds one statement may take", storage=True),
    Option("KEYGATE_DB_LOOKUP_TIMEOUT", "--db-lookup-timeout", "database.lookup_timeout",
           "seconds a Check's key lookup may take in all"),
    Option("KEYGATE_DATABASE_READ_URL", "--database-read-url", "database.read_url",
           "read replica URL for the Check path's lookups (a multi-host URL: each connection takes the first "
           "host that answers); lag-safe, see Database topology", default="none: the primary answers"),
    Option("KEYGATE_DATABASE_LISTEN_URL", "--database-listen-url", "database.listen_url",
           "direct PostgreSQL URL for the change listener (LISTEN) and migrations: required behind a "
           "transaction pooler", default="none: DATABASE_URL", storage=True),
    Option("KEYGATE_DATABASE_POOLER", "--database-pooler", "database.pooler",
           "none, or pgbouncer: DATABASE_URL is a transaction pooler (no prepared statements)", storage=True),
    Option("KEYGATE_RATE_LIMIT_OUTAGE", "--rate-limit-outage", "rate_limit_outage",
           "closed (refuse, 503) or open (admit uncounted) for rate-limited keys while the database is "
           "unreachable; credits always fail closed"),
)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = ""  # empty: start the embedded PostgreSQL in data_dir
    data_dir: Path = DEFAULT_DATA_DIR
    key_prefix: str = DEFAULT_PREFIX
    catalog_file: Path | None = None
    routes_file: Path | None = None  # Envoy route rules; default: the built-in Flowise rules
    upstream_credentials: Path | None = None  # the Flowise API key per workspace (keygate.upstream)
    log_level: str = "info"
    access_log: str = ACCESS_POLICIES[0]  # which RPCs get a line: denials (default), all, off
    workers: int = 1
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    tls_cert: Path | None = None  # with tls_key: serve TLS (see tls.py); none: plaintext
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: client certificates signed by it are required (mTLS)
    metrics: str | None = DEFAULT_METRICS  # host:port serving /metrics; None: off
    rate_limit_outage: str = RATE_LIMIT_OUTAGES[0]  # closed | open (keygate.limits.engine.Outage)
    cache: CacheSettings = field(default_factory=CacheSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in `env`: the process's environment by default; cli.py passes it with the flags
        given laid over it (OPTIONS names each flag's variable), so both are checked here alike."""
        env = os.environ if env is None else env
        cache, database = CacheSettings(), DatabaseSettings()
        values: dict[str, object] = {
            "listen": _address(env, "KEYGATE_LISTEN", DEFAULT_LISTEN),
            "database_url": check_primary_url("DATABASE_URL", env.get("DATABASE_URL", "")),
            "data_dir": Path(env.get("KEYGATE_DATA_DIR", str(DEFAULT_DATA_DIR))),
            "key_prefix": _key_prefix(env),
            "catalog_file": _path(env, "KEYGATE_CATALOG"),
            "routes_file": _path(env, "KEYGATE_ROUTES"),
            "upstream_credentials": _path(env, "KEYGATE_UPSTREAM_CREDENTIALS"),
            "log_level": _choice(env, "KEYGATE_LOG_LEVEL", LOG_LEVELS, "info"),
            "access_log": _choice(env, "KEYGATE_ACCESS_LOG", ACCESS_POLICIES, ACCESS_POLICIES[0]),
            "rate_limit_outage": _choice(env, "KEYGATE_RATE_LIMIT_OUTAGE", RATE_LIMIT_OUTAGES, RATE_LIMIT_OUTAGES[0]),
            "workers": _int(env, "KEYGATE_WORKERS", default_workers(), MOST_WORKERS),
            "shutdown_grace": _float(env, "KEYGATE_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE, HOUR),
            "tls_cert": _path(env, "KEYGATE_TLS_CERT"),
            "tls_key": _path(env, "KEYGATE_TLS_KEY"),
            "tls_client_ca": _path(env, "KEYGATE_TLS_CLIENT_CA"),
            "metrics": env.get("KEYGATE_METRICS", "") or DEFAULT_METRICS,
            "cache": CacheSettings(
                max_keys=_int(env, "KEYGATE_CACHE_MAX_KEYS", cache.max_keys, MOST_ENTRIES),
                max_negative=_int(env, "KEYGATE_CACHE_MAX_NEGATIVE", cache.max_negative, MOST_ENTRIES),
                max_bindings=_int(env, "KEYGATE_CACHE_MAX_BINDINGS", cache.max_bindings, MOST_ENTRIES),
                max_decisions=_int(env, "KEYGATE_CACHE_MAX_DECISIONS", cache.max_decisions, MOST_ENTRIES),
                ttl=_float(env, "KEYGATE_CACHE_TTL", cache.ttl, DAY),
                outage_grace=_float(env, "KEYGATE_OUTAGE_GRACE", cache.outage_grace, WEEK),
                unknown_key_lookups=_float(env, "KEYGATE_UNKNOWN_KEY_LOOKUPS", cache.unknown_key_lookups, MOST_LOOKUPS),
            ),
            "database": DatabaseSettings(
                connect_timeout=_float(env, "KEYGATE_DB_CONNECT_TIMEOUT", database.connect_timeout, HOUR),
                acquire_timeout=_float(env, "KEYGATE_DB_ACQUIRE_TIMEOUT", database.acquire_timeout, HOUR),
                statement_timeout=_float(env, "KEYGATE_DB_STATEMENT_TIMEOUT", database.statement_timeout, HOUR),
                lookup_timeout=_float(env, "KEYGATE_DB_LOOKUP_TIMEOUT", database.lookup_timeout, HOUR),
                read_url=check_url("KEYGATE_DATABASE_READ_URL", env.get("KEYGATE_DATABASE_READ_URL", "")),
                listen_url=check_primary_url("KEYGATE_DATABASE_LISTEN_URL", _listen_url(env)),
                pooler=_choice(env, "KEYGATE_DATABASE_POOLER", POOLERS, POOLERS[0]),
            ),
        }
        values["metrics"] = parse_address(str(values["metrics"]))
        return cls(**values)  # type: ignore[arg-type]  # each value parsed to its field's type above

    def tls_files(self) -> ServerFiles | None:
        return ServerFiles.of(self.tls_cert, self.tls_key, self.tls_client_ca)

    def key_format(self) -> KeyFormat:
        return KeyFormat(self.key_prefix)

    def catalog(self) -> Catalog:
        """The built-in catalog plus the operator's file: `categories: {name: [verb, ...]}`, or
        `{name: {verbs: [...], collections: [...]}}` for a category acting on other collections."""
        if self.catalog_file is None:
            return Catalog.build()
        data = _read_yaml(self.catalog_file, "KEYGATE_CATALOG")
        categories = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(categories, dict):
            raise InvalidArgument("KEYGATE_CATALOG", f"{self.catalog_file} must map 'categories' to lists of verbs")
        try:
            return Catalog.build(categories)
        except InvalidArgument as exc:
            raise InvalidArgument("KEYGATE_CATALOG", f"{self.catalog_file}: {exc.description}") from None


    def upstream(self) -> UpstreamCredentials | None:
        """The upstream credentials, read now (InvalidArgument naming the setting if they do not load)."""
        return UpstreamCredentials(self.upstream_credentials) if self.upstream_credentials else None

    def routes(self, catalog: Catalog) -> RouteTable:
        """The Envoy route rules: the operator's file, or the built-in Flowise rules."""
        source = self.routes_file or Path(str(resources.files("keygate") / "flowise_routes.yaml"))
        data = _read_yaml(source, "KEYGATE_ROUTES")
        if not isinstance(data, dict):
            raise InvalidArgument("KEYGATE_ROUTES", f"{source} must be a mapping with a 'routes' list")
        try:
            return RouteTable.parse(data, catalog)
        except InvalidArgument as exc:
            raise InvalidArgument("KEYGATE_ROUTES", f"{source}: {exc.message}") from None


def _read_yaml(path: Path, variable: str) -> object:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(variable, f"cannot read {path}: {exc}") from None


def default_workers() -> int:
    """One process per two cores: one grpc.aio process already keeps ~1.4 cores busy
    (perf-notes), so more processes than that only contend."""
    return max(1, (os.cpu_count() or 1) // 2)


def _key_prefix(env: Mapping[str, str]) -> str:
    """Checked with the other settings, so that a bad prefix is refused naming its variable, before serving."""
    prefix = env.get("KEYGATE_KEY_PREFIX", DEFAULT_PREFIX)
    try:
        KeyFormat(prefix)
    except InvalidArgument as exc:
        raise InvalidArgument("KEYGATE_KEY_PREFIX", exc.description) from None
    return prefix


def _listen_url(env: Mapping[str, str]) -> str:
    """The direct URL, which a transaction pooler makes necessary: LISTEN and session locks need a session."""
    url = env.get("KEYGATE_DATABASE_LISTEN_URL", "")
    if not url and env.get("KEYGATE_DATABASE_POOLER", "").lower() == "pgbouncer":
        raise InvalidArgument("KEYGATE_DATABASE_LISTEN_URL", "is required with KEYGATE_DATABASE_POOLER=pgbouncer: "
                                                             "LISTEN and the migrations' lock need a direct connection")
    return url


def _path(env: Mapping[str, str], name: str) -> Path | None:
    return Path(env[name]) if env.get(name) else None


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    """One of `allowed` (any case); InvalidArgument naming the variable and the allowed values otherwise."""
    raw = env.get(name, "").lower() or default
    if raw not in allowed:
        raise InvalidArgument(name, f"must be one of {', '.join(allowed)}, not {raw!r}")
    return raw


def _address(env: Mapping[str, str], name: str, default: str) -> str:
    """host:port (port 0 picks a free one), [v6]:port, or unix:PATH, as grpc binds them."""
    raw = env.get(name) or default
    host, _, port = raw.rpartition(":")
    if raw.startswith("unix:") or (host and port.isdigit() and int(port) <= 65535):
        return raw
    raise InvalidArgument(name, f"must be host:port (e.g. 0.0.0.0:50051), not {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, most: float) -> int:
    return int(_number(env, name, default, int, most))


def _float(env: Mapping[str, str], name: str, default: float, most: float) -> float:
    return float(_number(env, name, default, float, most))


def _number(env: Mapping[str, str], name: str, default: float, kind: type[int] | type[float], most: float) -> float:
    """A positive number up to `most`: beyond it a setting is a slip (milliseconds typed for seconds, a
    stray exponent) that would otherwise be obeyed, e.g. a cache trusting an entry for centuries."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidArgument(name, f"must be a number, not {raw!r}") from None
    if not 0 < value < math.inf:  # nan and inf parse as floats, but bound nothing
        raise InvalidArgument(name, "must be positive" if value <= 0 else f"must be a finite number, not {raw!r}")
    if value > most:
        raise InvalidArgument(name, f"must be at most {most:,.0f}, not {raw!r}")
    return value
