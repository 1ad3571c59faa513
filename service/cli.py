"""`keygate serve | migrate | bootstrap | keys ... | check | permissions`.

Exit status: 0 done; 1 failed (a configuration error, an error the server answered); 2 a wrong command line.
`check` answers with its status instead: 0 allowed, 1 denied, 2 no answer (any error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path

import uvloop

from . import client, logs, server
from .admin import KeyAdmin
from .config import Settings
from .domain.errors import KeygateError
from .server import database_url
from .store.postgres import Store


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        listen=getattr(args, "listen", None),
        database_url=args.database_url,
        data_dir=getattr(args, "data_dir", None),
        workers=getattr(args, "workers", None),
        access_log=getattr(args, "access_log", None),
    )


def _run(main: Callable[[], Awaitable[int | None]]) -> int:
    return uvloop.run(main()) or 0


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, access=settings.access_log)
    server.run(settings)
    return 0


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int | None]]) -> int | None:
    store = await Store.connect(database_url(settings))
    try:
        return await work(store)
    finally:
        await store.close()


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, access=settings.access_log)

    async def work(store: Store) -> None:
        applied = await store.migrate(settings.catalog())
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}", file=sys.stderr)

    return _run(lambda: _with_store(settings, work))


def _bootstrap(args: argparse.Namespace) -> int:
    """Print only the new root key on stdout, so a script can capture it."""
    settings = _settings(args)
    logs.configure("warning")

    async def work(store: Store) -> None:
        catalog = settings.catalog()
        await store.migrate(catalog)
        _, api_key = await KeyAdmin(store, catalog, settings.key_format()).create_root_key(args.name)
        print(api_key, flush=True)

    return _run(lambda: _with_store(settings, work))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keygate", description="API keys and authorization decisions over gRPC.")
    parser.add_argument("--version", action="version", version=f"keygate {metadata.version('keygate')}")
    commands = parser.add_subparsers(dest="command", required=True)

    def database_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", help="PostgreSQL URL (env DATABASE_URL); default: the embedded one")
        p.add_argument("--data-dir", type=Path, help="embedded PostgreSQL's directory (env KEYGATE_DATA_DIR)")

    serve_p = commands.add_parser("serve", help="serve gRPC (embedded PostgreSQL unless a URL is given)")
    serve_p.add_argument("--listen", help="address to listen on (env KEYGATE_LISTEN, default 127.0.0.1:50051)")
    serve_p.add_argument("--workers", type=_positive_int,
                         help="processes sharing the port (env KEYGATE_WORKERS; default one per two cores)")
    serve_p.add_argument("--access-log", choices=logs.ACCESS_POLICIES,
                         help="which RPCs get a log line: denials (refusals, errors and admin calls, bounded), "
                              "all, or off (env KEYGATE_ACCESS_LOG, default denials)")
    database_options(serve_p)
    serve_p.set_defaults(func=_serve)

    migrate_p = commands.add_parser("migrate", help="apply pending database migrations")
    database_options(migrate_p)
    migrate_p.set_defaults(func=_migrate)

    boot_p = commands.add_parser("bootstrap", help="create a root key and print only the key")
    database_options(boot_p)
    boot_p.add_argument("--name", default="root", help="name of the root key")
    boot_p.set_defaults(func=_bootstrap)

    client.add_parser(commands)
    client.add_check_parser(commands)
    client.add_permissions_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command; a configuration or server-side error is one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeygateError as exc:
        print(f"keygate: {exc.message}", file=sys.stderr)
        code = 1
    sys.exit(code)
