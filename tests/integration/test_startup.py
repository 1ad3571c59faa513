"""Starting keygate as a new user does: configuration mistakes, a taken port, the version, a second start."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .processes import KEYGATE, clean_environment, start, stop


def keygate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYGATE, *args], capture_output=True, text=True, env=clean_environment(**env), timeout=60)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    done = keygate("--version")
    assert done.returncode == 0
    assert done.stdout == f"keygate {metadata.version('keygate')}\n"


def test_an_unknown_log_level_is_one_line_naming_the_variable_and_the_choices(database_url: str) -> None:
    for command in (("serve", "--listen", "127.0.0.1:0"), ("migrate",), ("bootstrap",)):
        done = keygate(*command, "--database-url", database_url, KEYGATE_LOG_LEVEL="verbose")
        assert done.returncode == 1, done.stderr
        assert done.stderr == ("keygate: KEYGATE_LOG_LEVEL (--log-level): must be one of debug, info, warning, error, "
                               "not 'verbose'\n")


BAD_SETTINGS = {
    "not a number": ({"KEYGATE_CACHE_TTL": "abc"}, (), "KEYGATE_CACHE_TTL (--cache-ttl): must be a number, not 'abc'"),
    "a flag's zero": ({}, ("--workers", "0"), "KEYGATE_WORKERS (--workers): must be positive"),
    # Absurd but finite magnitudes were accepted: a stray exponent, seconds typed as milliseconds.
    "a magnitude beyond the setting's range": ({"KEYGATE_CACHE_TTL": "1e308"}, (),
                                               "KEYGATE_CACHE_TTL (--cache-ttl): must be at most 86,400, not '1e308'"),
    "more workers than any machine": ({}, ("--workers", "100000"),
                                      "KEYGATE_WORKERS (--workers): must be at most 256, not '100000'"),
    "a flag over its variable": ({"KEYGATE_DB_LOOKUP_TIMEOUT": "1"}, ("--db-lookup-timeout", "1s"),
                                 "KEYGATE_DB_LOOKUP_TIMEOUT (--db-lookup-timeout): must be a number, not '1s'"),
    "a choice not offered": ({"KEYGATE_ACCESS_LOG": "sometimes"}, (),
                             "KEYGATE_ACCESS_LOG (--access-log): must be one of denials, all, off, not 'sometimes'"),
    # `on` meant a line for every call, now `all`: refused rather than silently logging less.
    "the retired access log `on`": ({}, ("--access-log", "on"),
                                    "KEYGATE_ACCESS_LOG (--access-log): must be one of denials, all, off, not 'on'"),
    "no port": ({"KEYGATE_LISTEN": "localhost"}, (),
                "KEYGATE_LISTEN (--listen): must be host:port (e.g. 0.0.0.0:50051), not 'localhost'"),
    "a port out of range": ({}, ("--listen", "0.0.0.0:70000"),
                            "KEYGATE_LISTEN (--listen): must be host:port (e.g. 0.0.0.0:50051), not '0.0.0.0:70000'"),
    "an unreadable catalog": ({}, ("--catalog", "{dir}"),
                              "KEYGATE_CATALOG (--catalog): cannot read {dir}: [Errno 21] Is a directory: '{dir}'"),
    "several hosts, no session attribute": (
        {}, ("--database-url", "postgresql://keygate@127.0.0.1:1,127.0.0.1:2/keygate"),
        "DATABASE_URL (--database-url): names several hosts: add target_session_attrs=read-write so that keygate "
        "connects to the primary, and finds the new one after a failover"),
    # These three were "the database is unreachable (...); retry shortly", a start that never used the
    # replica, and "key_prefix: ..." naming neither variable nor flag.
    "a URL that is not PostgreSQL's": ({}, ("--database-url", "db1:5432/keygate"),
                                        "DATABASE_URL (--database-url): must be a PostgreSQL URL, "
                                        "postgresql://user@host:port/database"),
    "a read URL that is not PostgreSQL's": ({"KEYGATE_DATABASE_READ_URL": "replica1:5432/keygate"}, (),
                                             "KEYGATE_DATABASE_READ_URL (--database-read-url): must be a PostgreSQL "
                                             "URL, postgresql://user@host:port/database"),
    "a key prefix": ({"KEYGATE_KEY_PREFIX": "Key_"}, (), "KEYGATE_KEY_PREFIX (--key-prefix): must be 2-16 lowercase "
                                                        "letters or digits, starting with a letter"),
    "a missing routes file": ({"KEYGATE_ROUTES": "{dir}/routes.yaml"}, (),
                              "KEYGATE_ROUTES (--routes): cannot read {dir}/routes.yaml: [Errno 2] No such file or "
                              "directory: '{dir}/routes.yaml'"),
}


@pytest.mark.parametrize(("env", "flags", "line"), list(BAD_SETTINGS.values()), ids=list(BAD_SETTINGS))
def test_a_bad_setting_stops_serve_with_one_line_naming_variable_and_flag(
        database_url: str, tmp_path: Path, env: dict[str, str], flags: tuple[str, ...], line: str) -> None:
    env = {"KEYGATE_LISTEN": "127.0.0.1:0", **{k: v.format(dir=tmp_path) for k, v in env.items()}}
    done = keygate("serve", "--database-url", database_url, *(f.format(dir=tmp_path) for f in flags), **env)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"keygate: {line.format(dir=tmp_path)}\n")


def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """It was a FileNotFoundError traceback from pathlib (a read-only or missing mount, a typo)."""
    (tmp_path / "file").write_text("")
    done = keygate("serve", "--listen", "127.0.0.1:0", "--metrics", "off", "--data-dir", str(tmp_path / "file" / "kg"),
                   XDG_RUNTIME_DIR="", TMPDIR=str(tmp_path))  # keygate's own runtime directory: no warning
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"keygate: KEYGATE_DATA_DIR (--data-dir): cannot create {tmp_path}/file/kg: Not a directory\n"


def test_a_taken_port_is_one_friendly_line(database_url: str) -> None:
    """No raw `E... add_port.cc` line from grpc's C core before it, and nothing started."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"127.0.0.1:{other.getsockname()[1]}"
        done = keygate("serve", "--listen", taken, "--database-url", database_url)
    assert done.returncode == 1
    assert done.stderr == (f"keygate: cannot listen on {taken}: the address is in use "
                           "(another keygate? set --listen or KEYGATE_LISTEN)\n")


@pytest.mark.parametrize(("listen", "reason"), [
    ("192.0.2.1:50051", "no interface of this machine has that address"),  # TEST-NET-1: on no machine
    ("keygate.invalid:50051", ".+"),  # the resolver's words, which vary by C library
])
def test_an_address_that_cannot_be_served_is_one_friendly_line(database_url: str, listen: str, reason: str) -> None:
    """Like a taken port: grpc's raw `E... add_port.cc` line came first, then keygate's vaguer one."""
    done = keygate("serve", "--listen", listen, "--database-url", database_url)
    assert done.returncode == 1
    assert re.fullmatch(f"keygate: cannot listen on {re.escape(listen)}: {reason} "
                        r"\(set --listen or KEYGATE_LISTEN\)\n", done.stderr), done.stderr


def test_a_second_start_does_not_warn_about_the_runtime_directory(pg_dirs: Callable[[str], Path]) -> None:
    """keygate sets XDG_RUNTIME_DIR itself when it is unset: the directory must be one platformdirs accepts
    (ours, 0700), also when the first start left it 0755 as pgserver creates it."""
    data_dir, temp = pg_dirs("runtime-data"), pg_dirs("runtime-tmp")
    runtime = temp / f"keygate-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o755)
    runtime.chmod(0o755)
    env = {"XDG_RUNTIME_DIR": "", "TMPDIR": str(temp)}
    for _ in range(2):
        served = start("--data-dir", str(data_dir), env=env)
        logs = stop(served)
        assert "XDG_RUNTIME_DIR" not in logs and "RuntimeDirWarning" not in logs, logs
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
