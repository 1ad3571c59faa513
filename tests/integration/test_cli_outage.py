"""What the CLI says when keygate is up but its database is not: not "cannot reach keygate"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .private_postgres import PrivatePostgres
from .processes import bootstrap, start, stop


async def test_a_database_outage_is_told_apart_from_an_unreachable_server(pg_dirs: Callable[[str], Path]) -> None:
    pg = PrivatePostgres(pg_dirs("cli-outage") / "data")
    try:
        root = bootstrap(pg.url)  # a real key this server has not cached: only the database can verify it
        served = start("--database-url", pg.url)
        try:
            await pg.stop()
            listed = served.run("keys", "list", key=root)
            checked = served.run("check", "--action", "chatflows:view", key=root)
        finally:
            stop(served)
    finally:
        await pg.remove()
    for done, status in ((listed, 1), (checked, 2)):
        assert done.returncode == status, done.stderr
        assert done.stderr.startswith(f"error: UNAVAILABLE: keygate at {served.address} answered but cannot "
                                      "decide now: the database is unreachable"), done.stderr
        assert "cannot reach" not in done.stderr
