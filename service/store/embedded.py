"""The embedded PostgreSQL (the `pgserver` wheel) used when no DATABASE_URL is given."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ..domain.errors import InvalidArgument, KeygateError

RUNTIME_ENV = "XDG_RUNTIME_DIR"


def private_runtime_dir(base: Path | None = None) -> None:
    """Point XDG_RUNTIME_DIR at a directory of our own, mode 0700, unless the environment already names one.

    pgserver keeps its lock file in the user's runtime directory (via platformdirs), which warns when the
    variable is unset (containers, CI) and, when the directory is not private, warns and falls back to
    another one, so that two starts would not even share a lock. Hence create it 0700 ourselves (pgserver
    would create it 0755), and repair one left 0755 by earlier versions. A directory someone else owns, or a
    symlink, is left alone and not used: platformdirs then warns, as it should.
    """
    if os.environ.get(RUNTIME_ENV):
        return
    path = (base or Path(tempfile.gettempdir())) / f"keygate-runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return
        path.chmod(0o700)
    except OSError:
        return
    os.environ[RUNTIME_ENV] = str(path)


def start(data_dir: Path) -> str:
    """Start (or join) the PostgreSQL whose files live in `data_dir/pg`; return its URL.

    The server keeps running while any process holds it and stops after the last one exits. pgserver is
    the `embedded` extra: an install for an external PostgreSQL (the container image) does not have it.
    """
    private_runtime_dir()
    try:
        import pgserver  # only here, where it is needed, and after the runtime directory is settled
    except ImportError:
        raise KeygateError("no database: set DATABASE_URL (or --database-url) to a PostgreSQL URL, "
                           "or install the embedded PostgreSQL with: pip install 'keygate[embedded]'") from None

    pgdata = data_dir.resolve() / "pg"
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or missing mount: the setting's mistake, in one line
        raise InvalidArgument("KEYGATE_DATA_DIR", f"cannot create {pgdata.parent}: {exc.strerror}") from None
    return pgserver.get_server(pgdata, cleanup_mode="stop").get_uri()
