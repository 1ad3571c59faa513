"""Settings from flags and environment, and the operator's catalog extension file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .domain.errors import InvalidArgument
from .domain.keys import DEFAULT_PREFIX, KeyFormat
from .domain.permissions import Catalog

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path(".keygate")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = ""  # empty: start the embedded PostgreSQL in data_dir
    data_dir: Path = DEFAULT_DATA_DIR
    key_prefix: str = DEFAULT_PREFIX
    catalog_file: Path | None = None
    log_level: str = "info"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Environment first, then any non-None override (the command-line flags)."""
        env = os.environ
        values: dict[str, object] = {
            "listen": env.get("KEYGATE_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("DATABASE_URL", ""),
            "data_dir": Path(env.get("KEYGATE_DATA_DIR", str(DEFAULT_DATA_DIR))),
            "key_prefix": env.get("KEYGATE_KEY_PREFIX", DEFAULT_PREFIX),
            "catalog_file": Path(env["KEYGATE_CATALOG"]) if env.get("KEYGATE_CATALOG") else None,
            "log_level": env.get("KEYGATE_LOG_LEVEL", "info"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def key_format(self) -> KeyFormat:
        return KeyFormat(self.key_prefix)

    def catalog(self) -> Catalog:
        """The built-in catalog plus the operator's file: `categories: {name: [verb, ...]}`."""
        if self.catalog_file is None:
            return Catalog.build()
        try:
            data = yaml.safe_load(self.catalog_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidArgument("catalog", f"cannot read {self.catalog_file}: {exc}") from None
        categories = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(categories, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in categories.values()
        ):
            raise InvalidArgument("catalog", f"{self.catalog_file} must map 'categories' to lists of verbs")
        return Catalog.build(categories)
