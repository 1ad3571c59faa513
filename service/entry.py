"""The `keygate` command: the full command line (cli.py) when the server extra is installed, otherwise
the client commands (keys, check, permissions, health) alone, and each server command refused in one line.

A client-only install (`pip install keygate`) lacks asyncpg, uvloop and the rest of `keygate[server]`,
which cli.py imports; it must still run `keygate check` and say plainly why `keygate serve` cannot run.
"""

from __future__ import annotations

import argparse
import functools
import sys
from importlib import metadata

from . import cli_rpc

# The top-level modules of the `server` extra's packages (pyproject.toml): a missing one means the extra is.
SERVER_MODULES = frozenset({"asyncpg", "uvloop", "yaml", "orjson", "envoy", "prometheus_client", "grpc_reflection"})
SERVER_COMMANDS = ("serve", "migrate", "bootstrap", "gateway", "import")


def parser(prog: str = "keygate") -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top of every `keygate` command line, and its subcommands to add to."""
    top = argparse.ArgumentParser(prog=prog, description="API keys and authorization decisions over gRPC.")
    top.add_argument("--version", action="version", version=f"keygate {metadata.version('keygate')}")
    return top, top.add_subparsers(dest="command", required=True)


def _refuse(missing: str, args: argparse.Namespace) -> int:
    print(f"keygate: `keygate {args.command}` needs the server, which is not installed ({missing} is missing): "
          "pip install 'keygate[server]'", file=sys.stderr)
    return 1


def _client_only(missing: str) -> argparse.ArgumentParser:
    top, commands = parser()
    for name in SERVER_COMMANDS:
        command = commands.add_parser(name, help="needs keygate[server]", add_help=False)
        command.add_argument("arguments", nargs=argparse.REMAINDER)
        command.set_defaults(func=functools.partial(_refuse, missing))
    cli_rpc.add_parsers(commands)
    return top


def main(argv: list[str] | None = None) -> None:
    try:
        from . import cli  # the server's modules: only here, so that a client-only install gets this far
    except ModuleNotFoundError as missing:
        if (missing.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        args = _client_only(missing.name or "").parse_args(argv)
        sys.exit(args.func(args))
    cli.main(argv)
