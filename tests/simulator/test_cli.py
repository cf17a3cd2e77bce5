"""`tokenfuse simulate` as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tokenfuse.simulator.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.socket


def run_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tokenfuse", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_serves_until_terminated_with_its_settings() -> None:
    proc = run_cli("--port", "0", "--output-tokens", "7", "--chunk-tokens", "2")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split()[-1]
        body = {"model": "m", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
        answer = httpx.post(f"{url}/model/m/converse", json=body, timeout=5).json()
        assert answer["usage"]["outputTokens"] == 7
        assert httpx.get(f"{url}/_sim/config", timeout=5).json()["chunk_tokens"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    # uvicorn re-raises the signal after a graceful shutdown, as Unix expects.
    assert proc.returncode == -signal.SIGTERM
    assert "Traceback" not in err


def test_busy_port_is_one_clear_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli("--port", str(port))
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


def test_bad_option_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--output-tokens", "-3"])
    assert exited.value.code == 2
    assert "must not be negative" in capsys.readouterr().err
    assert main(["--chunk-tokens", "0"]) == 2
