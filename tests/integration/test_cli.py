"""The command line as a user meets it: `keygate serve` on the embedded PostgreSQL (what `make run`
does), the root key printed once, `keygate keys ...` and `keygate check` against it, `bootstrap`."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from keygate import cli_rpc
from keygate.cli import build_parser
from keygate.v1 import keys_pb2

from .processes import Served, free_port, start, stop

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


def test_the_banner_suggests_a_command_that_runs(served: Served) -> None:
    """`keygate` is not on PATH after `make run`: the banner names this keygate as the shell can run it."""
    suggested = next(line.split()[0] for line in served.banner.splitlines() if "keys create --name" in line)
    ran = subprocess.run([suggested, "--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.startswith("keygate "), ran.stderr


def test_create_then_check_shows_200_403_401(served: Served, root_key: str) -> None:
    created = served.run("keys", "create", "--name", "app", "--workspace", "ws1",
                         "--permission", "chatflows:update", "--expire-time", "30d", "--json", key=root_key)
    assert created.returncode == 0, created.stderr
    app_key = json.loads(created.stdout)["api_key"]
    assert KEY_RE.fullmatch(app_key)

    def check(action: str, key: str = app_key, status: int = 1) -> str:
        result = served.run("check", "--key-env", "APP_KEY", "--resource", "chatflows/3f2a", "--action", action,
                            APP_KEY=key)
        assert result.returncode == status, result.stderr
        return result.stdout

    assert check("chatflows:view", status=0).startswith("allowed  OK  200")
    assert check("chatflows:delete").startswith("denied  PERMISSION_DENIED  403")
    assert check("chatflows:view", key="fl_wrong").startswith("denied  KEY_MALFORMED  401")


def test_allowed_cidrs_are_set_shown_cleared_and_checked(served: Served, root_key: str) -> None:
    created = served.run("keys", "create", "--name", "office", "--workspace", "ws1", "--permission", "chatflows:view",
                         "--allowed-cidr", "10.0.0.0/8", "--allowed-cidr", "2001:DB8::/32", "--json", key=root_key)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    key_id, app_key = made["key"]["id"], made["api_key"]
    assert made["key"]["allowed_cidrs"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert re.search(r"allowed cidrs: +10\.0\.0\.0/8,2001:db8::/32\n", served.run("keys", "get", key_id,
                                                                            key=root_key).stdout)

    def check(address: str, status: int) -> str:
        result = served.run("check", "--key-env", "APP_KEY", "--action", "chatflows:view",
                            "--client-address", address, APP_KEY=app_key)
        assert result.returncode == status, result.stderr
        return result.stdout

    assert check("10.1.2.3", 0).startswith("allowed  OK  200")
    assert check("192.0.2.1", 1).startswith("denied  IP_NOT_ALLOWED  403")
    cleared = served.run("keys", "update", key_id, "--clear-allowed-cidrs", key=root_key)
    assert cleared.returncode == 0, cleared.stderr
    assert re.search(r"allowed cidrs: +\(any address\)\n", cleared.stdout)


def test_list_shows_masked_keys_only(served: Served, root_key: str) -> None:
    created = json.loads(served.run("keys", "create", "--name", "listed", "--workspace", "ws2",
                                    "--permission", "tools:view", "--json", key=root_key).stdout)
    listed = served.run("keys", "list", "--workspace", "ws2", key=root_key)
    assert listed.returncode == 0, listed.stderr
    assert created["key"]["display"] in listed.stdout and "listed" in listed.stdout
    assert created["api_key"] not in listed.stdout


def test_errors_name_the_field_once_and_set_the_exit_code(served: Served, root_key: str) -> None:
    bad = served.run("keys", "get", "not-a-uuid", key=root_key)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: id: ")
    assert len(bad.stderr.splitlines()) == 1, bad.stderr  # the field violation says what the message said

    missing = served.run("keys", "list")
    assert missing.returncode == 2 and "KEYGATE_API_KEY" in missing.stderr

    wrong = served.run("keys", "list", key="fl_" + "A" * 49)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    assert "fl_" + "A" * 49 not in wrong.stderr


def create_key(served: Served, root_key: str, *options: str, workspace: str = "ws1") -> dict[str, Any]:
    created = served.run("keys", "create", "--name", "cli", "--workspace", workspace, "--json",
                         *(options or ("--permission", "chatflows:update")), key=root_key)
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)


def test_check_exits_with_its_answer_and_help_says_how(served: Served, root_key: str) -> None:
    help_text = served.run("check", "--help").stdout
    assert "0 allowed, 1 denied, 2 no answer" in " ".join(help_text.split())

    unknown = served.run("check", "--action", "chatflows:fly", key=root_key)
    assert unknown.returncode == 2 and "INVALID_ARGUMENT" in unknown.stderr

    nobody = f"127.0.0.1:{free_port()}"
    unreachable = served.run("check", "--action", "chatflows:view", "--server", nobody, key=root_key)
    assert unreachable.returncode == 2
    assert f"cannot reach keygate at {nobody}" in unreachable.stderr


def test_a_collection_level_denial_names_the_collections(served: Served, root_key: str) -> None:
    scoped = create_key(served, root_key, "--permission", "chatflows:view", "--resource", "chatflows/abc")
    denied = served.run("check", "--key-env", "APP_KEY", "--action", "chatflows:view", APP_KEY=scoped["api_key"])
    assert denied.returncode == 1, denied.stderr
    assert denied.stdout == "denied  RESOURCE_OUT_OF_SCOPE  403  the key is not scoped to the whole of chatflows\n"


def test_usage_errors_name_the_whole_command(served: Served, root_key: str) -> None:
    key_id = create_key(served, root_key)["key"]["id"]
    nothing = served.run("keys", "update", key_id, key=root_key)
    assert nothing.returncode == 2
    assert nothing.stderr.startswith("keygate keys update: error: nothing to change")

    no_key = served.run("keys", "list")
    assert no_key.returncode == 2 and no_key.stderr.startswith("keygate keys list: error: set KEYGATE_API_KEY")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_rotate_says_when_the_old_secret_stops_and_get_and_list_show_it(served: Served, root_key: str) -> None:
    key_id = create_key(served, root_key, workspace="ws-rotate")["key"]["id"]
    before = datetime.now(UTC)
    rotated = served.run("keys", "rotate", key_id, "--grace", "1h", key=root_key)
    assert rotated.returncode == 0, rotated.stderr
    until = re.search(r"the previous secret keeps working until (\S+)", rotated.stderr)
    assert until is not None, rotated.stderr
    ends = _time(until[1])
    assert before + timedelta(hours=1) - timedelta(seconds=1) <= ends <= datetime.now(UTC) + timedelta(hours=1)
    assert f"old secret until: {until[1]}" in rotated.stdout

    got = served.run("keys", "get", key_id, key=root_key)
    assert f"old secret until: {until[1]}" in got.stdout
    assert until[1] in served.run("keys", "list", "--workspace", "ws-rotate", key=root_key).stdout
    as_json = json.loads(served.run("keys", "get", key_id, "--json", key=root_key).stdout)
    assert _time(as_json["previous_secret_expire_time"]).replace(microsecond=0) == ends

    again = served.run("keys", "rotate", key_id, key=root_key)  # grace 0: every older secret stops now
    assert again.returncode == 0, again.stderr
    assert "the previous secret no longer works" in again.stderr
    assert "previous_secret_expire_time" not in json.loads(served.run("keys", "get", key_id, "--json",
                                                                      key=root_key).stdout)


def test_rotate_rotates_the_key_as_read(served: Served, root_key: str) -> None:
    """Two admins rotating at once: the one whose read the other's rotation overtook gets ABORTED, not OK."""
    key_id = create_key(served, root_key)["key"]["id"]
    command = build_parser().parse_args(["keys", "rotate", key_id]).func.args[0]
    assert command.prepare is cli_rpc.read_etag
    with grpc.insecure_channel(served.address) as channel:
        admin = cli_rpc.Client(channel, root_key, 10.0)
        request = keys_pb2.RotateKeyRequest(id=key_id)
        cli_rpc.read_etag(admin, request)
        assert request.etag
        assert served.run("keys", "rotate", key_id, key=root_key).returncode == 0  # the other admin
        with pytest.raises(grpc.RpcError) as info:
            admin.call("RotateKey", request)
    assert info.value.code() is grpc.StatusCode.ABORTED

    stale = served.run("keys", "rotate", key_id, "--etag", request.etag, key=root_key)
    assert stale.returncode == 1 and "ABORTED" in stale.stderr


def test_permissions_lists_the_catalog(served: Served, root_key: str) -> None:
    table = served.run("permissions", key=root_key)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert rows["chatflows:update"].split()[-1] == "chatflows:view"  # IMPLIES, the last column
    listed = json.loads(served.run("permissions", "--json", key=root_key).stdout)["permissions"]
    by_name = {p["name"]: p for p in listed}
    assert by_name["predictions:create"]["collections"] == ["chatflows", "agentflows"]
    assert set(by_name["tools:*"]["implies"]) == {"tools:view", "tools:create", "tools:update", "tools:delete",
                                                  "tools:export"}
    assert all(p["description"] for p in listed)

    anonymous = served.run("permissions")
    assert anonymous.returncode == 2 and "KEYGATE_API_KEY" in anonymous.stderr


def test_list_pages_with_page_token_and_page_size_zero(served: Served, root_key: str) -> None:
    ids = {create_key(served, root_key, workspace="ws-pages")["key"]["id"] for _ in range(3)}

    def listed(*options: str) -> tuple[set[str], str]:
        done = served.run("keys", "list", "--workspace", "ws-pages", *options, key=root_key)
        assert done.returncode == 0, done.stderr
        return {line.split()[0] for line in done.stdout.splitlines()[1:]}, done.stderr

    first, hint = listed("--page-size", "2")
    token = re.search(r"--page-token (\S+)", hint)
    assert len(first) == 2 and token is not None, hint
    rest, _ = listed("--page-size", "2", "--page-token", token[1])
    assert first | rest == ids and not first & rest
    assert listed("--page-size", "0")[0] == ids


def test_rate_limits_and_credits_from_the_command_line(served: Served, root_key: str) -> None:
    created = served.run("keys", "create", "--name", "metered", "--workspace", "ws1", "--permission", "chatflows:view",
                         "--rate-limit", "per-minute=100/1m", "--credits", "3:3/30d", "--json", key=root_key)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["key"]["rate_limits"] == [{"name": "per-minute", "limit": "100", "window": "60s"}]
    assert made["key"]["credits"]["refill_amount"] == "3"

    def check(cost: str, status: int) -> str:
        result = served.run("check", "--key-env", "APP_KEY", "--action", "chatflows:view", "--cost", cost,
                            APP_KEY=made["api_key"])
        assert result.returncode == status, result.stderr
        return result.stdout

    assert check("2", 0).startswith("allowed  OK  200")
    assert check("2", 1).startswith("denied  USAGE_EXCEEDED  429")
    shown = served.run("keys", "get", made["key"]["id"], key=root_key)
    # the store's balance: the server still holds the last credit in its lease (a lower bound, see README)
    assert "per-minute=100/1m" in shown.stdout and "0 left, set back to 3 every 30d" in shown.stdout
    cleared = served.run("keys", "update", made["key"]["id"], "--clear-rate-limits", "--clear-credits", "--json",
                         key=root_key)
    assert cleared.returncode == 0, cleared.stderr
    assert not json.loads(cleared.stdout)["rate_limits"] and "credits" not in json.loads(cleared.stdout)
    bad = served.run("keys", "create", "--name", "x", "--workspace", "ws1", "--permission", "chatflows:view",
                     "--rate-limit", "nope", key=root_key)
    assert bad.returncode == 2 and "name=limit/window" in bad.stderr


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

