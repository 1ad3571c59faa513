"""The embedded PostgreSQL (the `pgserver` wheel) used when no DATABASE_URL is given."""

from __future__ import annotations

import os
from pathlib import Path

import pgserver


def start(data_dir: Path) -> str:
    """Start (or join) the PostgreSQL whose files live in `data_dir/pg`; return its URL.

    The server keeps running while any process holds it and stops after the last one exits.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"keygate-runtime-{os.getuid()}"))
    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri()
