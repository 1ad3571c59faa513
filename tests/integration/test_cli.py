"""The command line as a user meets it: `keygate serve` on the embedded PostgreSQL (what `make run`
does), the root key printed once, `keygate keys ...` and `keygate check` against it, `bootstrap`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .processes import Served, start, stop

KEY_RE = re.compile(r"\bfl_[0-9A-Za-z]{49}\b")


@pytest.fixture(scope="module")
def data_dir(pg_dirs: Callable[[str], Path]) -> Path:
    return pg_dirs("cli")


@pytest.fixture(scope="module")
def served(data_dir: Path) -> Iterator[Served]:
    served = start("--data-dir", str(data_dir))
    yield served
    if served.process.poll() is None:
        stop(served)


@pytest.fixture(scope="module")
def root_key(served: Served) -> str:
    keys = KEY_RE.findall(served.banner)
    assert len(keys) == 1, served.banner
    return keys[0]


def test_first_start_prints_the_root_key_and_how_to_use_it(served: Served, root_key: str) -> None:
    assert "shown this once" in served.banner
    assert "export KEYGATE_API_KEY" in served.banner
    assert f"listening on {served.address}" in served.banner


def test_create_then_check_shows_200_403_401(served: Served, root_key: str) -> None:
    created = served.run("keys", "create", "--name", "app", "--workspace", "ws1",
                         "--permission", "chatflows:update", "--expire-time", "30d", "--json", key=root_key)
    assert created.returncode == 0, created.stderr
    app_key = json.loads(created.stdout)["api_key"]
    assert KEY_RE.fullmatch(app_key)

    def check(action: str, key: str = app_key) -> str:
        result = served.run("check", "--key-env", "APP_KEY", "--resource", "chatflows/3f2a", "--action", action,
                            APP_KEY=key)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert check("chatflows:view").startswith("allowed  OK  200")
    assert check("chatflows:delete").startswith("denied  PERMISSION_DENIED  403")
    assert check("chatflows:view", key="fl_wrong").startswith("denied  KEY_MALFORMED  401")


def test_list_shows_masked_keys_only(served: Served, root_key: str) -> None:
    created = json.loads(served.run("keys", "create", "--name", "listed", "--workspace", "ws2",
                                    "--permission", "tools:view", "--json", key=root_key).stdout)
    listed = served.run("keys", "list", "--workspace", "ws2", key=root_key)
    assert listed.returncode == 0, listed.stderr
    assert created["key"]["display"] in listed.stdout and "listed" in listed.stdout
    assert created["api_key"] not in listed.stdout


def test_errors_name_the_field_and_set_the_exit_code(served: Served, root_key: str) -> None:
    bad = served.run("keys", "get", "not-a-uuid", key=root_key)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "id:" in bad.stderr

    missing = served.run("keys", "list")
    assert missing.returncode == 2 and "KEYGATE_API_KEY" in missing.stderr

    wrong = served.run("keys", "list", key="fl_" + "A" * 49)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    assert "fl_" + "A" * 49 not in wrong.stderr


def test_bootstrap_prints_only_a_working_root_key(served: Served, data_dir: Path) -> None:
    booted = served.run("bootstrap", "--data-dir", str(data_dir))
    assert booted.returncode == 0, booted.stderr
    assert KEY_RE.fullmatch(booted.stdout.strip())
    listed = served.run("keys", "list", key=booted.stdout.strip())
    assert listed.returncode == 0, listed.stderr


def test_restart_keeps_keys_and_prints_no_new_root_key(served: Served, root_key: str, data_dir: Path) -> None:
    logs = stop(served)
    assert root_key not in logs
    assert all(json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{"))
    again = start("--data-dir", str(data_dir))
    try:
        assert not KEY_RE.search(again.banner)
        assert again.run("keys", "list", key=root_key).returncode == 0
    finally:
        stop(again)
