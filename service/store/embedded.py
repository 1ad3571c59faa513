"""The embedded PostgreSQL (the `pgserver` wheel) used when no DATABASE_URL is given."""

from __future__ import annotations

import os
from pathlib import Path


def start(data_dir: Path) -> str:
    """Start (or join) the PostgreSQL whose files live in `data_dir/pg`; return its URL.

    The server keeps running while any process holds it and stops after the last one exits.
    """
    # pgserver's platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI), so
    # give it a private directory and import it only here, where it is needed.
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/keygate-runtime-{os.getuid()}")
    import pgserver

    pgdata = data_dir.resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(pgdata, cleanup_mode="stop").get_uri()
