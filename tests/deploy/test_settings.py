"""The README's settings table against the code: every variable keygate reads has a row, with the flag
the command line has and the default the code has; and config.OPTIONS, from which the flags are built,
covers every variable config.py reads."""

from __future__ import annotations

import argparse
import re

import pytest

from keygate.cli import _settings, build_parser
from keygate.config import DAY, HOUR, MOST_ENTRIES, MOST_LOOKUPS, MOST_WORKERS, OPTIONS, WEEK, Settings
from keygate.domain.errors import InvalidArgument

from .sources import ROOT, variables_in, variables_read

# A setting with no flag, and why.
WITHOUT_FLAG = {"KEYGATE_API_KEY": "a key in a flag would show in `ps` and in shell history"}
# One setting of each range.
MAXIMA = {"KEYGATE_WORKERS": MOST_WORKERS, "KEYGATE_CACHE_MAX_KEYS": MOST_ENTRIES, "KEYGATE_CACHE_TTL": DAY,
          "KEYGATE_OUTAGE_GRACE": WEEK, "KEYGATE_UNKNOWN_KEY_LOOKUPS": MOST_LOOKUPS, "KEYGATE_DB_LOOKUP_TIMEOUT": HOUR}


def readme_rows() -> dict[str, tuple[str, str]]:
    """The table under "### Settings": variable -> (flag, default), backticks removed."""
    section = ROOT.joinpath("README.md").read_text().split("\n### Settings\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            assert cells[0] not in rows, f"{cells[0]} has two rows"
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def flags_of_every_command(parser: argparse.ArgumentParser) -> set[str]:
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= flags_of_every_command(sub)
    return flags


def test_options_cover_every_variable_config_reads() -> None:
    assert {o.env for o in OPTIONS} == variables_in(ROOT / "service" / "config.py")


def test_the_table_lists_exactly_the_variables_keygate_reads() -> None:
    assert set(readme_rows()) == variables_read()


def test_each_row_has_the_flag_and_the_default_of_the_code() -> None:
    rows, defaults = readme_rows(), Settings.from_env({})
    assert {env: rows[env] for env in (o.env for o in OPTIONS)} == {
        o.env: (o.flag, o.describe_default(defaults)) for o in OPTIONS}
    flags = flags_of_every_command(build_parser())
    for env, (flag, _) in rows.items():
        assert flag in flags or env in WITHOUT_FLAG, f"{env}: no command has {flag}"


def test_serve_takes_every_setting_and_a_flag_overrides_its_variable(monkeypatch) -> None:
    for option in OPTIONS:
        assert getattr(build_parser().parse_args(["serve", option.flag, "x"]), option.env) == "x"
    monkeypatch.setenv("KEYGATE_CACHE_TTL", "3")
    monkeypatch.setenv("KEYGATE_OUTAGE_GRACE", "7")
    settings = _settings(build_parser().parse_args(["serve", "--cache-ttl", "4.5"]))
    assert (settings.cache.ttl, settings.cache.outage_grace) == (4.5, 7.0)


def test_the_readme_states_the_range_the_code_enforces() -> None:
    """Each maximum config.py enforces is in the README's sentence on numbers, and is refused one past it."""
    text = " ".join(ROOT.joinpath("README.md").read_text().split("Numbers must be positive", 1)[1]
                    .split("\n\n", 1)[0].split())
    for variable, most in MAXIMA.items():
        assert f"{most:,}" in text, variable
        with pytest.raises(InvalidArgument, match=f"must be at most {most:,}"):
            Settings.from_env({variable: str(most + 1)})
        assert Settings.from_env({variable: str(most)})  # the maximum itself is accepted
