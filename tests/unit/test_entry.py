"""The client commands (`keygate health`, run by a Kubernetes exec probe every few seconds, and `keys`,
`check`, `permissions`) never import the server's modules, also where the server is installed: they did,
and `keygate health` took ~0.6 s of CPU a run instead of ~0.35 s (README, Kubernetes)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
SERVER = {server!r}
from keygate import entry
try:
    entry.main(["health", "--server", "127.0.0.1:1", "--timeout", "0.5"])
except SystemExit as exit:
    assert exit.code == 2, exit.code  # no answer: nothing listens there
print(sorted(m for m in sys.modules if m.partition(".")[0] in SERVER
             or m in ("keygate.cli", "keygate.server", "keygate.store")))
"""
# The server's costly imports (grpc_reflection is not among them: importing grpc loads it where installed).
SERVER = ("asyncpg", "uvloop", "yaml", "orjson", "prometheus_client")


def test_a_client_command_imports_no_server_module() -> None:
    import asyncpg  # noqa: F401  # the server is installed here: the test would see its modules if imported

    done = subprocess.run([sys.executable, "-c", PROBE.format(server=SERVER)], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
