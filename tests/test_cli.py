"""The dispatcher and the generated command reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse import clidoc
from tokenfuse.cli import COMMANDS, main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_md_is_current() -> None:
    assert DOC.read_text() == clidoc.render(), "regenerate with: python -m tokenfuse.clidoc > docs/cli.md"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_naming_itself(name: str) -> None:
    assert f"tokenfuse {name}" in clidoc.help_text(name)


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
