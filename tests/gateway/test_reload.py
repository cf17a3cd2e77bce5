"""Issue 11 through real `tokenfuse serve` processes: SIGHUP reloads the config while a
stream is in flight, an invalid config keeps the old one, and run-time keys created
with `tokenfuse keys` reach a second replica and stop working when revoked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.replicas import Replica
from tokenfuse.ledger.schema import connect
from tokenfuse.simulator.server import SimulatorThread

pytestmark = pytest.mark.socket

CAROL = "tf-carol-secret-0003"


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


def _sim(sim: SimulatorThread, **changes: Any) -> None:
    httpx.post(f"{sim.url}/_sim/config", json=changes, timeout=5).raise_for_status()


def base_config(sim_url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "admin_token": "admin-secret"},
        "store": f"sqlite:///{tmp_path / 'ledger.db'}",
        "counters": "memory",
        "kill_poll_ms": 100,
        "ledger": {"batch_interval_ms": 20},
        "upstreams": [{"name": "openai", "protocol": "openai", "base_url": f"{sim_url}/v1", "api_key": "sk-up"}],
        "keys": [{"name": "alice-droid", "key": ALICE, "principal": "alice", "workflow": "droid"}],
        "prices": {"test-model": {"input": 1.00, "output": 10.00}},
        "defaults": {"max_tokens": 256, "max_tokens_cap": 32000},
        **extra,
    }


def chat(url: str, key: str, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **kw},
        timeout=30,
    )


def wait_for(predicate: Callable[[], bool], limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def ledger(tmp_path: Path) -> list[dict[str, Any]]:
    conn = connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    cur = conn.execute("SELECT * FROM requests ORDER BY rowid")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.close()
    return rows


def test_sighup_adds_a_key_and_a_budget_while_a_stream_is_in_flight(slow_sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = base_config(slow_sim.url, tmp_path)
    gw = Replica(cfg, tmp_path, "gw").start()
    try:
        assert chat(gw.url, CAROL).status_code == 401
        _sim(slow_sim, output_tokens=160, chunk_tokens=2, chunk_delay_ms=60)  # a stream of ~5 s
        chunks: list[bytes] = []
        first = threading.Event()
        status: list[int] = []

        def stream() -> None:
            with httpx.stream(
                "POST", f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {ALICE}"},
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                      "stream": True}, timeout=30,
            ) as resp:
                status.append(resp.status_code)
                for part in resp.iter_bytes():
                    chunks.append(part)
                    first.set()

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(10), "the stream did not start"
        new = json.loads(json.dumps(cfg))
        new["server"]["port"] = gw.port
        new["keys"].append({"name": "carol-k", "key": CAROL, "principal": "carol", "team": "platform"})
        new["budgets"] = [{"name": "carol-cap", "match": {"principal": "carol"}, "window": "day",
                           "limit": {"requests": 1}}]
        gw.path.write_text(json.dumps(new))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        _sim(slow_sim, chunk_delay_ms=0)
        assert wait_for(lambda: chat(gw.url, CAROL).status_code == 200), gw.log.read_text()[-2000:]
        assert t.is_alive(), "precondition: the reload must land while the stream is still running"
        t.join(30)
        assert t.is_alive() is False
        body = b"".join(chunks)
        assert status == [200] and b"data: [DONE]" in body, body[-300:]
        refused = chat(gw.url, CAROL)  # the budget arrived with the key: one request a day
        assert refused.status_code == 429, refused.text
        assert "carol-cap" in refused.text
        log = gw.log.read_text()
        assert "config reloaded" in log and "keys added: carol-k" in log and "budgets added: carol-cap" in log
    finally:
        gw.stop()
        _sim(slow_sim, output_tokens=64, chunk_tokens=4, chunk_delay_ms=0)
    rows = ledger(tmp_path)
    streamed = [r for r in rows if r["principal"] == "alice"]
    assert [r["outcome"] for r in streamed] == ["ok"] and streamed[0]["output"] == 160
    carol = [r for r in rows if r["principal"] == "carol"]
    assert [r["outcome"] for r in carol] == ["ok", "refused"]
    assert {r["team"] for r in carol} == {"platform"}


def test_an_invalid_config_on_reload_keeps_the_old_one(slow_sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = base_config(slow_sim.url, tmp_path)
    gw = Replica(cfg, tmp_path, "gw").start()
    good = gw.path.read_text()
    try:
        # Every error in one pass, from the command; the running gateway is not touched.
        bad = json.loads(good)
        bad["upstreams"].append(dict(bad["upstreams"][0]))
        bad["keys"].append({"name": "carol-k", "key": ALICE, "principal": "carol"})
        bad["defaults"]["max_tokens"] = "many"
        gw.path.write_text(json.dumps(bad))
        out = subprocess.run(
            [sys.executable, "-m", "tokenfuse", "reload", "--config", str(gw.path)], capture_output=True, text=True,
            timeout=60,
        )
        assert out.returncode == 1
        for part in ("two upstreams are named 'openai'", "same secret", "defaults.max_tokens", "not reloaded"):
            assert part in out.stderr, out.stderr
        # Valid to read, but the gateway cannot build it (the prices file is missing): it says why, keeps the old.
        broken = json.loads(good)
        broken["pricing"] = {"file": str(tmp_path / "missing-prices.json")}
        broken["keys"].append({"name": "carol-k", "key": CAROL, "principal": "carol"})
        gw.path.write_text(json.dumps(broken))
        out = subprocess.run(
            [sys.executable, "-m", "tokenfuse", "reload", "--config", str(gw.path)], capture_output=True, text=True,
            timeout=60,
        )
        assert out.returncode == 1 and "missing-prices.json" in out.stderr, out.stderr
        assert chat(gw.url, CAROL).status_code == 401
        # SIGHUP with an invalid file: logged, the old config keeps serving.
        gw.path.write_text(json.dumps(bad))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config NOT reloaded" in gw.log.read_text().split("missing-prices.json")[-1])
        assert chat(gw.url, ALICE).status_code == 200
        # A good file is then taken, and `tokenfuse reload` exits 0.
        fixed = json.loads(good)
        fixed["keys"].append({"name": "carol-k", "key": CAROL, "principal": "carol"})
        gw.path.write_text(json.dumps(fixed))
        out = subprocess.run(
            [sys.executable, "-m", "tokenfuse", "reload", "--config", str(gw.path)], capture_output=True, text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "keys added: carol-k" in out.stdout
        assert chat(gw.url, CAROL).status_code == 200
    finally:
        gw.stop()


def test_keys_created_at_run_time_reach_a_second_replica_and_revoke(slow_sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = base_config(slow_sim.url, tmp_path)
    a = Replica(cfg, tmp_path, "a").start()
    b = Replica(cfg, tmp_path, "b").start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tokenfuse", "keys", "create", "--config", str(a.path), "--name", "dave-k",
             "--principal", "dave", "--team", "platform", "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        secret = json.loads(out.stdout)["secret"]
        assert wait_for(lambda: chat(b.url, secret).status_code == 200, limit_s=5)
        assert wait_for(lambda: chat(a.url, secret).status_code == 200, limit_s=5)
        # The admin API lists it (never the secret) and revokes too.
        listed = a.admin("GET", "/keys").json()["keys"]
        assert [k["name"] for k in listed] == ["dave-k"] and secret not in json.dumps(listed)
        out = subprocess.run(
            [sys.executable, "-m", "tokenfuse", "keys", "revoke", "--config", str(a.path), "dave-k"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: chat(b.url, secret).status_code == 401, limit_s=5)
        assert wait_for(lambda: chat(a.url, secret).status_code == 401, limit_s=5)
        created = a.admin("POST", "/keys", {"name": "erin-k", "principal": "erin", "tags": ["x"]})
        assert created.status_code == 201, created.text
        erin = created.json()["secret"]
        assert wait_for(lambda: chat(b.url, erin).status_code == 200, limit_s=5)
        assert a.admin("POST", "/keys/erin-k/revoke").status_code == 200
        assert wait_for(lambda: chat(b.url, erin).status_code == 401, limit_s=5)
    finally:
        a.stop()
        b.stop()
    rows = [r for r in ledger(tmp_path) if r["key_name"] == "dave-k" and r["outcome"] == "ok"]
    assert rows and {(r["principal"], r["team"]) for r in rows} == {("dave", "platform")}
