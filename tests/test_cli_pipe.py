"""A reader that stops early (`tokenfuse status | head`) ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    read, write = os.pipe()
    os.close(read)  # every write the command makes fails with EPIPE, as after `head` exits
    try:
        return subprocess.run(
            [sys.executable, "-m", "tokenfuse", *args], stdout=write, stderr=subprocess.PIPE, timeout=60, check=False
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["--help"], ["usage", "--help"], ["prices"], ["status", "--config", "CONFIG"]])
def test_closed_stdout_is_quiet(args: list[str], tmp_path: Path) -> None:
    config = tmp_path / "tokenfuse.yaml"
    config.write_text(f"store: sqlite:///{tmp_path / 'ledger.db'}\n")
    done = _run_into_closed_pipe([str(config) if a == "CONFIG" else a for a in args])
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr.decode()
    # 141 as if killed by SIGPIPE; argparse swallows the failed write of --help itself and exits 0.
    assert done.returncode in (0, 141)
