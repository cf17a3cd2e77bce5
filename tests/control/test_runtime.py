"""Run-time budgets in the store and the watcher that applies them with the kill switches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.limits.conftest import wait_until
from tokenfuse.config import BudgetConfig
from tokenfuse.control.killswitch import KillSwitches, KillSwitchStore
from tokenfuse.control.runtime import ControlWatcher, RuntimeBudgetStore
from tokenfuse.ledger.store import StoreConnection
from tokenfuse.limits.context import RequestContext

REPO = Path(__file__).resolve().parents[2]
CTX = RequestContext("alice-droid", "alice", "droid", "s-1", "claude-opus-4-1", "anthropic")


class RecordingLimiter:
    """Stands in for the limiter's one method the watcher calls."""

    def __init__(self) -> None:
        self.calls: list[list[BudgetConfig]] = []

    def set_runtime_budgets(self, budgets: list[BudgetConfig]) -> None:
        self.calls.append(budgets)


def budget(name: str = "alice-day", usd: str = "5") -> BudgetConfig:
    return BudgetConfig.model_validate(
        {"name": name, "match": {"principal": "alice"}, "window": "day", "limit": {"usd": usd}}
    )


def test_runtime_budget_store_roundtrip(store_url: str) -> None:
    store = RuntimeBudgetStore(store_url)
    try:
        assert store.list() == []
        assert store.put(budget()) is True
        assert store.put(budget(usd="7.25")) is False  # replaced, not duplicated
        rolling = BudgetConfig.model_validate(
            {
                "name": "opus-hour",
                "match": {"model": "*opus*"},
                "window": "rolling: 1h",
                "limit": {"requests": 10},
            }
        )
        store.put(rolling)
        got = store.list()
        assert [b.name for b in got] == ["alice-day", "opus-hour"]
        assert str(got[0].limit.usd) == "7.25"
        assert got[1].rolling_seconds == 3600
        assert got[1].match.model == "*opus*"
        assert store.remove("alice-day") is True
        assert store.remove("alice-day") is False
        assert [b.name for b in store.list()] == ["opus-hour"]
    finally:
        store.close()


def test_invalid_stored_spec_is_skipped_not_fatal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = RuntimeBudgetStore(url)
    store.put(budget())
    raw = StoreConnection(url)
    raw.execute("INSERT INTO runtime_budgets (name, spec, created_ts) VALUES ('bad', '{\"name\": 1}', 0)")
    raw.close()
    assert [b.name for b in store.list()] == ["alice-day"]
    store.close()


def test_two_watchers_see_a_switch_set_through_a_third_store(store_url: str) -> None:
    async def scenario() -> None:
        kills_a, kills_b = KillSwitches(), KillSwitches()
        limiter_a, limiter_b = RecordingLimiter(), RecordingLimiter()
        a = ControlWatcher(store_url, kills_a, limiter_a, poll_ms=50)
        b = ControlWatcher(store_url, kills_b, limiter_b, poll_ms=50)
        await a.start()
        await b.start()
        writer = KillSwitchStore(store_url)
        budgets = RuntimeBudgetStore(store_url)
        try:
            assert kills_a.check(CTX) is None and kills_b.check(CTX) is None
            await asyncio.to_thread(writer.set, "workflow", "droid", "runaway")
            assert await wait_until(lambda: kills_a.check(CTX) is not None and kills_b.check(CTX) is not None)
            hit = kills_b.check(CTX)
            assert hit is not None and hit.reason == "runaway"

            await asyncio.to_thread(budgets.put, budget())
            assert await wait_until(
                lambda: bool(limiter_a.calls and limiter_a.calls[-1] and limiter_b.calls[-1])
            )
            assert [x.name for x in limiter_b.calls[-1]] == ["alice-day"]
            calls = len(limiter_a.calls)
            refreshes = a.refreshes
            assert await wait_until(lambda: a.refreshes >= refreshes + 3)
            # Unchanged budgets are not pushed again on every poll.
            assert len(limiter_a.calls) == calls

            await asyncio.to_thread(writer.clear, "workflow", "droid")
            assert await wait_until(lambda: kills_a.check(CTX) is None and kills_b.check(CTX) is None)
        finally:
            await a.stop()
            await b.stop()
            writer.close()
            budgets.close()

    asyncio.run(scenario())


def test_switch_set_by_the_cli_in_another_process_reaches_a_watcher(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    config = tmp_path / "tokenfuse.yaml"
    config.write_text(f"store: sqlite:///{db}\nkill_poll_ms: 50\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    async def scenario() -> None:
        kills = KillSwitches()
        watcher = ControlWatcher(f"sqlite:///{db}", kills, None, poll_ms=50)
        await watcher.start()
        try:
            proc = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tokenfuse", "kill", "--config", str(config), "--model", "*opus*"],
                env=env,
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr
            assert await wait_until(lambda: kills.check(CTX) is not None)
            assert kills.check(RequestContext("k", "p", "w", None, "gpt-4o", "openai")) is None
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_watcher_reads_before_start_returns_and_refresh_now_is_immediate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    KillSwitchStore(url).set("principal", "alice", "preset")

    async def scenario() -> None:
        kills = KillSwitches()
        # A poll interval far longer than the test: only start() and refresh_now() can apply changes.
        watcher = ControlWatcher(url, kills, None, poll_ms=600_000)
        await watcher.start()
        try:
            assert kills.check(CTX) is not None
            await asyncio.to_thread(watcher.kill_store.clear, "principal", "alice")
            assert kills.check(CTX) is not None
            await watcher.refresh_now()
            assert kills.check(CTX) is None
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_unreadable_store_keeps_the_last_known_switches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    KillSwitchStore(url).set("all", None, "incident")

    async def scenario() -> None:
        kills = KillSwitches()
        watcher = ControlWatcher(url, kills, None, poll_ms=20)
        await watcher.start()
        try:
            assert kills.check(CTX) is not None

            def broken() -> list[object]:
                raise RuntimeError("store down")

            watcher.kill_store.list = broken  # type: ignore[method-assign,assignment]
            refreshes = watcher.refreshes
            assert await wait_until(lambda: watcher._failing)
            assert watcher.refreshes == refreshes
            assert kills.check(CTX) is not None
        finally:
            await watcher.stop()

    asyncio.run(scenario())
