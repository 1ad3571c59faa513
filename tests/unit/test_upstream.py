"""The upstream credentials file: its format, its errors (which never hold a key), and following its changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keygate.cli import _one_line
from keygate.config import Settings
from keygate.domain.errors import InvalidArgument
from keygate.upstream import UpstreamCredentials

SECRET = "flowise-Secret_0123456789abcdef"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_each_workspace_gets_its_key_and_others_the_default(tmp_path: Path) -> None:
    creds = UpstreamCredentials(write(tmp_path / "c.yaml", f"ws1: {SECRET}\n'*': default-key\n"))
    assert creds.for_workspace("ws1") == f"Bearer {SECRET}"
    assert creds.for_workspace("ws2") == "Bearer default-key"
    assert creds.for_workspace("") == "Bearer default-key"  # root keys, which have no workspace


def test_json_is_accepted_and_a_workspace_without_key_or_default_has_none(tmp_path: Path) -> None:
    creds = UpstreamCredentials(write(tmp_path / "c.json", f'{{"ws1": "{SECRET}"}}'))
    assert creds.for_workspace("ws1") == f"Bearer {SECRET}"
    assert creds.for_workspace("ws2") is None


def test_the_keys_are_not_in_its_repr(tmp_path: Path) -> None:
    creds = UpstreamCredentials(write(tmp_path / "c.yaml", f"ws1: {SECRET}\n"))
    assert SECRET not in repr(creds) and "1 entries" in repr(creds)


@pytest.mark.parametrize(("text", "says"), [
    (f"ws1: [{SECRET}]\n", "the key of workspace 'ws1' must be one word"),
    (f"ws1: '{SECRET} more'\n", "the key of workspace 'ws1' must be one word"),
    (f"ws1: \"{SECRET}\\n\"\n", "the key of workspace 'ws1' must be one word"),
    ("ws1: ''\n", "the key of workspace 'ws1' must be one word"),
    (f"- {SECRET}\n", "must map workspace ids"),
    ("", "must map workspace ids"),
    (f"ws1: {SECRET}\n  bad: [\n", "is not YAML or JSON"),
    (f"{SECRET}: x\n1: y\n", "every workspace id must be a non-empty string"),
])
def test_a_bad_file_fails_in_one_line_naming_the_setting_never_the_key(
        tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(InvalidArgument) as err:
        Settings(upstream_credentials=path).upstream()
    line = _one_line(err.value)
    assert line.startswith("keygate: KEYGATE_UPSTREAM_CREDENTIALS (--upstream-credentials): ")
    assert says in line and str(path) in line and "\n" not in line
    assert SECRET not in line and SECRET not in str(err.value)


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        Settings.from_env({"KEYGATE_UPSTREAM_CREDENTIALS": str(tmp_path / "nope.yaml")}).upstream()
    assert err.value.field == "KEYGATE_UPSTREAM_CREDENTIALS" and "cannot read" in err.value.message


def test_unset_means_no_credential() -> None:
    assert Settings.from_env({}).upstream() is None


def test_a_changed_file_is_followed_and_a_bad_one_refused_keeping_the_old(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "ws1: old-key\n")
    creds = UpstreamCredentials(path)

    creds.refresh()  # unchanged: nothing read
    assert creds.for_workspace("ws1") == "Bearer old-key"

    replacement = write(tmp_path / "new.yaml", "ws1: new-key\n")
    os.replace(replacement, path)  # as a secret volume swaps its files
    creds.refresh()
    assert creds.for_workspace("ws1") == "Bearer new-key"

    os.replace(write(tmp_path / "bad.yaml", f"ws1: [{SECRET}]\n"), path)
    creds.refresh()
    assert creds.for_workspace("ws1") == "Bearer new-key"

    path.unlink()  # a file gone meanwhile is refused too
    creds.refresh()
    assert creds.for_workspace("ws1") == "Bearer new-key"
