"""`tokenfuse status`: from a live gateway's admin API, or rebuilt from the ledger."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tokenfuse.config import load_config
from tokenfuse.control import status as status_cli
from tokenfuse.control.admin import AdminApp
from tokenfuse.control.killswitch import KillSwitchStore
from tokenfuse.control.runtime import RuntimeBudgetStore
from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.schema import COLUMN_NAMES, connect


def write_config(tmp_path: Path, port: int = 1, token: str | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "tokenfuse.yaml"
    lines = [
        f"store: sqlite:///{tmp_path / 'store.db'}",
        f"server: {{host: 127.0.0.1, port: {port}{', admin_token: ' + token if token else ''}}}",
        "budgets:",
        "  - {name: alice-day, match: {principal: alice}, window: day, limit: {usd: 10, requests: 100}}",
        "  - {name: opus-total, match: {model: '*opus*'}, window: total, limit: {tokens: {output: 1000}}}",
        "sessions: {max_requests: 10, max_usd: 5}",
        extra,
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def add_rows(url: str, rows: list[LedgerRow]) -> None:
    conn = connect(url)
    marks = ", ".join("?" for _ in COLUMN_NAMES)
    for r in rows:
        conn.execute(
            f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({marks})", r.as_tuple("sqlite")
        )
    conn.close()


def row(
    cost: str, principal: str = "alice", model: str = "claude-opus-4-1", output: int = 100, **kw: Any
) -> LedgerRow:
    base: dict[str, Any] = {
        "ts": time.time(),
        "request_id": f"r{time.monotonic_ns()}",
        "key_name": f"{principal}-key",
        "principal": principal,
        "workflow": "droid",
        "session": None,
        "protocol": "anthropic",
        "route": "messages",
        "model": model,
        "upstream": "anthropic",
        "status": 200,
        "input_uncached": 10,
        "output": output,
        "cost_usd": Decimal(cost),
    }
    base.update(kw)
    return LedgerRow(**base)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in report["budgets"]}


def test_ledger_source_counts_spend_per_budget_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    url = load_config(cfg).store
    add_rows(
        url,
        [
            row("1.25"),
            row("0.000000001", session="agent-1"),
            row("3", principal="bob", model="gpt-4o", output=7),
            row("0", outcome="refused", output=0),
            row("9", ts=time.time() - 3 * 86400),  # an older day: outside alice-day, inside opus-total
        ],
    )
    KillSwitchStore(url).set("workflow", "droid", "runaway")
    RuntimeBudgetStore(url).put(
        __import__("tokenfuse.config", fromlist=["BudgetConfig"]).BudgetConfig.model_validate(
            {"name": "bob-hour", "match": {"principal": "bob"}, "window": "hour", "limit": {"usd": 4}}
        )
    )
    assert status_cli.main(["--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "ledger"
    assert "admin_token is not set" in report["note"]
    budgets = by_name(report)
    assert Decimal(budgets["alice-day"]["spent_usd"]) == Decimal("1.250000001")
    assert budgets["alice-day"]["spent_requests"] == 2
    assert budgets["alice-day"]["reserved_usd"] == "0"
    assert budgets["alice-day"]["resets_at"] is not None
    assert budgets["opus-total"]["spent_tokens"]["output"] == 300
    assert budgets["bob-hour"]["source"] == "runtime"
    assert Decimal(budgets["bob-hour"]["spent_usd"]) == Decimal("3")
    assert budgets["bob-hour"]["percent"] == 75.0
    assert [(k["scope"], k["value"]) for k in report["kill_switches"]] == [("workflow", "droid")]
    assert [s["session"] for s in report["sessions"]] == ["agent-1"]
    assert report["sessions"][0]["max_requests"] == 10


def test_text_output_lists_budgets_switches_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    add_rows(load_config(cfg).store, [row("2.5", session="agent-7")])
    KillSwitchStore(load_config(cfg).store).set("all", None, "incident 42")
    assert status_cli.main(["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("source: ledger")
    lines = out.splitlines()
    alice = next(line for line in lines if line.startswith("alice-day"))
    assert "usd 10" in alice and "2.5000" in alice and "25.0%" in alice
    assert any(line.split()[:2] == ["requests", "100"] for line in lines)  # second dimension row
    assert "opus-total" in out and "tokens.output 1000" in out
    assert "all traffic  reason: incident 42" in out
    assert "agent-7" in out and "1/10" in out


def test_empty_store_is_not_created_by_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert status_cli.main(["--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "ledger"
    assert {b["spent_usd"] for b in report["budgets"]} == {"0"}
    assert not (tmp_path / "store.db").exists()


def test_missing_config_is_one_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_cli.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: no such file" in err and len(err.strip().splitlines()) == 1


class LiveLimiter:
    def __init__(self) -> None:
        self.calls = 0

    def set_runtime_budgets(self, budgets: list[Any]) -> None:
        pass

    async def snapshot(self, now: float | None = None) -> list[Any]:
        self.calls += 1
        from tokenfuse.limits.budgets import status_from

        limits = (10_000_000_000, -1, -1, -1, -1, -1, -1)
        spent = (2_000_000_000, 3, 0, 0, 0, 0, 0)
        reserved = (500_000_000, 1, 0, 0, 0, 0, 0)
        return [status_from("alice-day", "day", 0.0, 86400.0, limits, spent, reserved, "config")]

    async def session_snapshot(self, limit: int = 10) -> list[dict[str, object]]:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_gateway(tmp_path: Path) -> Iterator[tuple[int, LiveLimiter]]:
    """The admin app served on a real socket, as the gateway mounts it."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    limiter = LiveLimiter()
    app = AdminApp("tok", KillSwitchStore(url), None, limiter, RuntimeBudgetStore(url))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port, limiter
    server.should_exit = True
    thread.join(10)


def test_gateway_source_when_one_answers(
    tmp_path: Path, live_gateway: tuple[int, LiveLimiter], capsys: pytest.CaptureFixture[str]
) -> None:
    port, limiter = live_gateway
    cfg = write_config(tmp_path, port=port, token="tok")
    KillSwitchStore(load_config(cfg).store).set("key", "k1", None)
    assert status_cli.main(["--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "gateway"
    assert limiter.calls == 1
    b = by_name(report)["alice-day"]
    assert b["spent_usd"] == "2" and b["reserved_usd"] == "0.5" and b["reserved_requests"] == 1
    assert [(k["scope"], k["value"]) for k in report["kill_switches"]] == [("key", "k1")]
    # --ledger skips the gateway even when it answers.
    assert status_cli.main(["--config", str(cfg), "--json", "--ledger"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "ledger"
    assert limiter.calls == 1


def test_wrong_token_falls_back_to_the_ledger_and_says_why(
    tmp_path: Path, live_gateway: tuple[int, LiveLimiter], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = live_gateway
    cfg = write_config(tmp_path, port=port, token="not-the-token")
    assert status_cli.main(["--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "ledger"
    assert "refused the status request" in report["note"] and "admin token" in report["note"]


def test_no_gateway_listening_falls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, port=free_port(), token="tok")
    assert status_cli.main(["--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "ledger" and "no gateway answered" in report["note"]


def test_dispatcher_routes_status_without_the_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenfuse import cli

    cfg = write_config(tmp_path)
    assert cli.main(["status", "--config", str(cfg), "--json", "--ledger"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "ledger" and "--ledger given" in report["note"]
    assert sorted(b["name"] for b in report["budgets"]) == ["alice-day", "opus-total"]
