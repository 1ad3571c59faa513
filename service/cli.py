"""`keygate serve | migrate | bootstrap | gateway | import flowise | keys ... | check | permissions`.

Exit status: 0 done; 1 failed (a configuration error, an error the server answered); 2 a wrong command line.
`check` answers with its status instead: 0 allowed, 1 denied, 2 no answer (any error).
`import flowise` exits 3 when it ran but left keys or flow restrictions out (each reported).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop

from . import cli_rpc, entry, gateway, logs, server
from .admin import KeyAdmin
from .config import OPTIONS, Option, Settings
from .domain.errors import InvalidArgument, KeygateError
from .flowise_import import import_flowise
from .server import database_url
from .store.flowise import open_source
from .store.postgres import Store

IMPORT_INCOMPLETE = 3  # `import flowise` ran, but some keys or flow restrictions stayed out


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The environment with the setting flags given laid over it."""
    given = {o.env: value for o in OPTIONS if (value := getattr(args, o.env, None)) is not None}
    return {**os.environ, **given}


def _settings(args: argparse.Namespace) -> Settings:
    """The environment with the flags given laid over it, parsed and checked in one place (config.py)."""
    return Settings.from_env(_environment(args))


def _one_line(exc: KeygateError) -> str:
    """The error for stderr; a bad setting names both its variable and its flag."""
    if isinstance(exc, InvalidArgument):
        for option in OPTIONS:
            if option.env == exc.field:
                return f"keygate: {option.env} ({option.flag}): {exc.description}"
    return f"keygate: {exc.message}"


def _add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    defaults = Settings.from_env({})
    group = parser.add_argument_group("settings (each flag overrides its environment variable)")
    for option in options:
        group.add_argument(option.flag, dest=option.env, metavar="VALUE",
                           help=f"{option.help} (env {option.env}; default {option.describe_default(defaults)})")


def _run(main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    return uvloop.run(main()) or 0


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, access=settings.access_log)
    server.run(settings)
    return 0


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int | None]]) -> int | None:
    store = await Store.connect(database_url(settings), settings.database)
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


def _gateway(args: argparse.Namespace) -> int:
    """keygate serve and Envoy in front of a Flowise; keygate's flags reach the child as its environment."""
    environment = _environment(args)
    return gateway.run(gateway.plan(args, Settings.from_env(environment), environment))


def _import_flowise(args: argparse.Namespace) -> int:
    """The report on stdout (never a key); the exit status says whether everything came over."""
    settings = _settings(args)
    logs.configure("warning")
    source = open_source(args.source, settings.database)

    async def work(store: Store) -> int:
        catalog = settings.catalog()
        await store.migrate(catalog)
        report = await import_flowise(store, source, catalog, settings.key_format(), dry_run=args.dry_run,
                                      clear_bindings=args.clear_flowise_bindings)
        for line in report.lines():
            print(line, flush=True)
        return 0 if report.complete else IMPORT_INCOMPLETE

    return _run(lambda: _with_store(settings, work))


def _add_import_parser(commands: argparse._SubParsersAction, storage: tuple[Option, ...]) -> None:
    import_p = commands.add_parser("import", help="import API keys from another system into keygate")
    systems = import_p.add_subparsers(dest="system", required=True)
    flowise_p = systems.add_parser(
        "flowise", help="import a Flowise database's API keys (hashed on the way in) and flow restrictions",
        description="Every apikey row becomes a keygate key with the same id, name, workspace and permissions, "
                    "working unchanged; chat_flow.apikeyid becomes a binding. A second run changes nothing.")
    flowise_p.add_argument("--source", required=True, metavar="PATH_OR_URL",
                           help="Flowise's SQLite file (database.sqlite) or a postgresql:// URL "
                                "(put a password in PGPASSWORD, not in the URL: a flag shows in `ps`)")
    flowise_p.add_argument("--dry-run", action="store_true", help="report what would happen; write nothing")
    flowise_p.add_argument("--clear-flowise-bindings", action="store_true",
                           help="set Flowise's chat_flow.apikeyid to NULL on the flows now bound in keygate")
    _add_options(flowise_p, storage)
    flowise_p.set_defaults(func=_import_flowise)


def build_parser() -> argparse.ArgumentParser:
    parser, commands = entry.parser()

    storage = tuple(o for o in OPTIONS if o.storage)

    serve_p = commands.add_parser("serve", help="serve gRPC (embedded PostgreSQL unless a URL is given)")
    _add_options(serve_p, OPTIONS)
    serve_p.set_defaults(func=_serve)

    migrate_p = commands.add_parser("migrate", help="apply pending database migrations, then exit")
    _add_options(migrate_p, storage)
    migrate_p.set_defaults(func=_migrate)

    boot_p = commands.add_parser("bootstrap", help="create a root key and print only the key")
    _add_options(boot_p, storage)
    boot_p.add_argument("--name", default="root", help="name of the root key")
    boot_p.set_defaults(func=_bootstrap)

    gateway_p = commands.add_parser("gateway", help="keygate and Envoy (deploy/envoy/envoy.yaml) in front of a Flowise")
    gateway.add_arguments(gateway_p)
    _add_options(gateway_p, OPTIONS)
    gateway_p.set_defaults(func=_gateway)

    _add_import_parser(commands, storage)
    cli_rpc.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command; a configuration or server-side error is one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeygateError as exc:
        print(_one_line(exc), file=sys.stderr)
        code = 1
    sys.exit(code)
