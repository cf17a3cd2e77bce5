"""`tokenfuse status` after a gateway restart shows its sessions' caps, not just their spend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ALICE, make_config
from tokenfuse.control import status as status_cli
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

SESSIONS = "sessions: {max_requests: 7, max_usd: 3}"


def test_status_after_restart_shows_session_caps(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    with GatewayThread(make_config(sim.url, db, SESSIONS)) as gw:
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {ALICE}", "x-tokenfuse-session": "run-1"},
            json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=30,
        )
        assert r.status_code == 200
    with GatewayThread(make_config(sim.url, db, SESSIONS)) as gw:  # restarted: spend rebuilt from the ledger
        cfg = tmp_path / "status.yaml"
        cfg.write_text(
            f"store: sqlite:///{db}\nserver: {{host: 127.0.0.1, port: {gw.port}, admin_token: admin-secret}}\n"
            f"{SESSIONS}\n"
        )
        assert status_cli.main(["--config", str(cfg), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert report["source"] == "gateway"
    (session,) = report["sessions"]
    assert session["session"] == "alice/run-1" and session["requests"] == 1
    assert (session["max_requests"], session["max_usd"]) == (7, "3")
