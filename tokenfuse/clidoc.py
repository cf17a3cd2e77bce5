"""Render docs/cli.md from every command's own `--help`, so the reference cannot drift.

`python -m tokenfuse.clidoc > docs/cli.md` regenerates it; tests/test_cli.py checks it.
"""

from __future__ import annotations

import contextlib
import io
import os

from tokenfuse.cli import COMMANDS, _usage, main

WIDTH = "100"


def help_text(command: str) -> str:
    out = io.StringIO()
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal; fix it for stable docs
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    return out.getvalue().rstrip()


def render() -> str:
    parts = [
        "# Command reference",
        "",
        "Generated from each command's `--help` by `python -m tokenfuse.clidoc > docs/cli.md`;",
        "`tests/test_cli.py` fails when this page and the code disagree.",
        "",
        "```",
        _usage(),
        "```",
    ]
    for name in COMMANDS:
        parts += ["", f"## `tokenfuse {name}`", "", "```", help_text(name), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
