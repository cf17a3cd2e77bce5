"""Show the corpus precision/recall report in every test run, not only with -s."""

from __future__ import annotations

import pytest

CORPUS_REPORT = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = config.stash.get(CORPUS_REPORT, None)
    if report:
        terminalreporter.section("tokenfuse lint corpus")
        terminalreporter.write_line(report)
