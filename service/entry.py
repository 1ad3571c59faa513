"""The `keygate` command: the full command line (cli.py) when the server extra is installed, otherwise
the client commands (keys, check, permissions, health) alone, and each server command refused in one line.

A client-only install (`pip install keygate`) lacks asyncpg, uvloop and the rest of `keygate[server]`,
which cli.py imports; it must still run `keygate check` and say plainly why `keygate serve` cannot run.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from . import cli_rpc

# The top-level modules of the `server` extra's packages (pyproject.toml): a missing one means the extra is.
SERVER_MODULES = frozenset({"asyncpg", "uvloop", "yaml", "orjson", "envoy", "prometheus_client", "grpc_reflection"})
SERVER_COMMANDS = ("serve", "migrate", "bootstrap", "gateway", "import")
# cli_rpc's commands. With the server installed too they still skip its modules: `keygate health`, run by a
# Kubernetes exec probe every few seconds, then costs ~0.35 s of CPU instead of ~0.6 s (README, Kubernetes).
CLIENT_COMMANDS = ("keys", "check", "permissions", "health")


def parser(prog: str = "keygate") -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The top of every `keygate` command line, and its subcommands to add to."""
    top = argparse.ArgumentParser(prog=prog, description="API keys and authorization decisions over gRPC.")
    top.add_argument("--version", action="version", version=f"keygate {metadata.version('keygate')}")
    return top, top.add_subparsers(dest="command", required=True)


def _client_only(argv: list[str], missing: str) -> int:
    """The client commands; a server command (listed in --help as such) is refused before its arguments
    are parsed, since they are the server's."""
    if argv[:1] and argv[0] in SERVER_COMMANDS:
        print(f"keygate: `keygate {argv[0]}` needs the server, which is not installed ({missing} is missing): "
              "pip install 'keygate[server]'", file=sys.stderr)
        return 1
    return _client(argv)


def _client(argv: list[str]) -> int:
    """The client commands' command line, without importing the server's modules."""
    top, commands = parser()
    for name in SERVER_COMMANDS:
        commands.add_parser(name, help="needs the server: pip install 'keygate[server]'")
    cli_rpc.add_parsers(commands)
    args = top.parse_args(argv)
    return int(args.func(args))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in CLIENT_COMMANDS:
        sys.exit(_client(argv))
    try:
        from . import cli  # the server's modules: only here, so that a client-only install gets this far
    except ModuleNotFoundError as missing:
        if (missing.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        sys.exit(_client_only(argv, missing.name or ""))
    cli.main(argv)
