"""Settings from flags and environment, and the operator's catalog extension file."""

from __future__ import annotations

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
from .store.postgres import DatabaseSettings

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".keygate")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = ""  # empty: start the embedded PostgreSQL in data_dir
    data_dir: Path = DEFAULT_DATA_DIR
    key_prefix: str = DEFAULT_PREFIX
    catalog_file: Path | None = None
    routes_file: Path | None = None  # Envoy route rules; default: the built-in Flowise rules
    log_level: str = "info"
    access_log: str = ACCESS_POLICIES[0]  # which RPCs get a line: denials (default), all, off
    workers: int = 1
    cache: CacheSettings = field(default_factory=CacheSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Environment first, then any non-None override (the command-line flags)."""
        env = os.environ
        cache, database = CacheSettings(), DatabaseSettings()
        values: dict[str, object] = {
            "listen": env.get("KEYGATE_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("DATABASE_URL", ""),
            "data_dir": Path(env.get("KEYGATE_DATA_DIR", str(DEFAULT_DATA_DIR))),
            "key_prefix": env.get("KEYGATE_KEY_PREFIX", DEFAULT_PREFIX),
            "catalog_file": Path(env["KEYGATE_CATALOG"]) if env.get("KEYGATE_CATALOG") else None,
            "routes_file": Path(env["KEYGATE_ROUTES"]) if env.get("KEYGATE_ROUTES") else None,
            "log_level": _choice(env, "KEYGATE_LOG_LEVEL", LOG_LEVELS, "info"),
            "access_log": _choice(env, "KEYGATE_ACCESS_LOG", ACCESS_POLICIES, ACCESS_POLICIES[0]),
            "workers": _int(env, "KEYGATE_WORKERS", default_workers()),
            "cache": CacheSettings(
                max_keys=_int(env, "KEYGATE_CACHE_MAX_KEYS", cache.max_keys),
                max_negative=_int(env, "KEYGATE_CACHE_MAX_NEGATIVE", cache.max_negative),
                max_bindings=_int(env, "KEYGATE_CACHE_MAX_BINDINGS", cache.max_bindings),
                max_decisions=_int(env, "KEYGATE_CACHE_MAX_DECISIONS", cache.max_decisions),
                ttl=_float(env, "KEYGATE_CACHE_TTL", cache.ttl),
                outage_grace=_float(env, "KEYGATE_OUTAGE_GRACE", cache.outage_grace),
                unknown_key_lookups=_float(env, "KEYGATE_UNKNOWN_KEY_LOOKUPS", cache.unknown_key_lookups),
            ),
            "database": DatabaseSettings(
                connect_timeout=_float(env, "KEYGATE_DB_CONNECT_TIMEOUT", database.connect_timeout),
                acquire_timeout=_float(env, "KEYGATE_DB_ACQUIRE_TIMEOUT", database.acquire_timeout),
                statement_timeout=_float(env, "KEYGATE_DB_STATEMENT_TIMEOUT", database.statement_timeout),
                lookup_timeout=_float(env, "KEYGATE_DB_LOOKUP_TIMEOUT", database.lookup_timeout),
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def key_format(self) -> KeyFormat:
        return KeyFormat(self.key_prefix)

    def catalog(self) -> Catalog:
        """The built-in catalog plus the operator's file: `categories: {name: [verb, ...]}`, or
        `{name: {verbs: [...], collections: [...]}}` for a category acting on other collections."""
        if self.catalog_file is None:
            return Catalog.build()
        data = _read_yaml(self.catalog_file, "catalog")
        categories = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(categories, dict):
            raise InvalidArgument("catalog", f"{self.catalog_file} must map 'categories' to lists of verbs")
        try:
            return Catalog.build(categories)
        except InvalidArgument as exc:
            raise InvalidArgument("catalog", f"{self.catalog_file}: {exc.description}") from None


    def routes(self, catalog: Catalog) -> RouteTable:
        """The Envoy route rules: the operator's file, or the built-in Flowise rules."""
        source = self.routes_file or Path(str(resources.files("keygate") / "flowise_routes.yaml"))
        data = _read_yaml(source, "routes")
        if not isinstance(data, dict):
            raise InvalidArgument("routes", f"{source} must be a mapping with a 'routes' list")
        try:
            return RouteTable.parse(data, catalog)
        except InvalidArgument as exc:
            raise InvalidArgument("routes", f"{source}: {exc.message}") from None


def _read_yaml(path: Path, what: str) -> object:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(what, f"cannot read {path}: {exc}") from None


def default_workers() -> int:
    """One process per two cores: one grpc.aio process already keeps ~1.4 cores busy
    (perf-notes), so more processes than that only contend."""
    return max(1, (os.cpu_count() or 1) // 2)


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    """One of `allowed` (any case); InvalidArgument naming the variable and the allowed values otherwise."""
    raw = env.get(name, "").lower() or default
    if raw not in allowed:
        raise InvalidArgument(name, f"must be one of {', '.join(allowed)}, not {raw!r}")
    return raw


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, int))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return float(_number(env, name, default, float))


def _number(env: Mapping[str, str], name: str, default: float, kind: type[int] | type[float]) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidArgument(name, f"must be a number, not {raw!r}") from None
    if value <= 0:
        raise InvalidArgument(name, "must be positive")
    return value
