"""The chaos table of every run, printed at the end of the session (the README quotes it)."""

from __future__ import annotations

import pytest

from ..e2e.conftest import upstream  # noqa: F401 (a fixture: the echoing upstream behind Envoy)
from .harness import ROWS, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "chaos")
        terminalreporter.write_line(table(ROWS))
