"""SIGKILL with requests in flight: a restarted `tokenfuse serve` (memory counters)
still knows every request the provider served, through the admission journal."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import ALICE, BOB, make_config
from tests.gateway.replicas import Replica
from tokenfuse.ledger.schema import connect
from tokenfuse.pricing import PriceBook
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.usage import Usage

pytestmark = pytest.mark.socket

CLASSES = ("input_uncached", "cache_read", "cache_write", "cache_write_1h", "output")
NOT_FORWARDED = ("refused", "killed", "unauthorized", "bad_request", "not_found")


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    # A private simulator: slow enough that requests are in flight when the gateway dies.
    with SimulatorThread() as s:
        httpx.post(
            f"{s.url}/_sim/config", json={"output_tokens": 64, "latency_ms": 600, "chunk_delay_ms": 40}
        ).raise_for_status()
        yield s


def gateway_config(sim_url: str, tmp: Path, budget: dict[str, Any]) -> dict[str, Any]:
    cfg = make_config(sim_url, tmp / "ledger.db").model_dump(mode="json", exclude={"source"})
    cfg["budgets"] = [budget]
    # Rows commit every 300 ms: a kill finds some committed, some finished but queued, some in flight.
    cfg["ledger"] = {"batch_interval_ms": 300, "batch_size": 1000}
    return cfg


def call(url: str, i: int) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE if i % 2 else BOB, max_retries=0, timeout=10)
    msg = [{"role": "user", "content": f"step {i} of the plan"}]
    try:
        if i % 3 == 0:
            for _ in client.chat.completions.create(model="test-model", messages=msg, max_tokens=64, stream=True):  # type: ignore[arg-type]
                pass
        else:
            client.chat.completions.create(model="test-model", messages=msg, max_tokens=64)  # type: ignore[arg-type]
        return "ok"
    except openai.RateLimitError:
        return "refused"
    except (openai.APIConnectionError, openai.APIStatusError, httpx.HTTPError):
        return "broken"  # the gateway died under it


def wave_then_kill(replica: Replica, n: int, kill_after_s: float) -> None:
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(call, replica.url, i) for i in range(n)]
    time.sleep(kill_after_s)
    replica.kill9()
    for f in futures:
        f.result()
    pool.shutdown()


def settled_served(sim_url: str) -> list[dict[str, Any]]:
    """The simulator's record once requests orphaned by the kill have finished there too."""
    last = -1
    stable_since = time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        served: list[dict[str, Any]] = httpx.get(f"{sim_url}/_sim/served", timeout=10).json()["requests"]
        if len(served) != last:
            last, stable_since = len(served), time.monotonic()
        elif time.monotonic() - stable_since > 1.5:
            return served
        time.sleep(0.1)
    raise AssertionError("the simulator never settled")


def billed(cfg: dict[str, Any], served: list[dict[str, Any]]) -> Decimal:
    book = PriceBook.build(cfg["prices"])
    total = Decimal(0)
    for rec in served:
        price = book.lookup(rec["model"])
        assert price is not None
        total += price.cost(Usage(**{c: rec["usage"][c] for c in CLASSES}))
    return total


def ledger(tmp: Path) -> list[tuple[str, str]]:
    conn = connect(f"sqlite:///{tmp / 'ledger.db'}")
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT outcome, cost_usd FROM requests").fetchall()]
    finally:
        conn.close()


def budget_status(replica: Replica, name: str) -> dict[str, Any]:
    r = replica.admin("GET", "/status")
    assert r.status_code == 200, r.text
    (budget,) = [b for b in r.json()["budgets"] if b["name"] == name]
    return dict(budget)


def test_restart_after_sigkill_remembers_every_served_request(sim: SimulatorThread, tmp_path: Path) -> None:
    name = f"day-{uuid.uuid4().hex[:8]}"
    cfg = gateway_config(sim.url, tmp_path, {"name": name, "window": "day", "limit": {"usd": 100}})
    replica = Replica(cfg, tmp_path, "gw").start()
    try:
        for _ in range(2):  # two kills under load, as in the report
            wave_then_kill(replica, 30, kill_after_s=0.9)
            settled_served(sim.url)
            replica.start()
        served = settled_served(sim.url)
        status = budget_status(replica, name)
    finally:
        replica.stop()
    rows = ledger(tmp_path)
    forwarded = [r for r in rows if r[0] not in NOT_FORWARDED]
    incomplete = [r for r in rows if r[0] == "incomplete"]
    assert incomplete, "the kills must catch requests in flight for this test to mean anything"
    assert len([r for r in rows if r[0] == "ok"]) < len(served)
    # Every request the provider served has a row, final or incomplete.
    assert len(forwarded) >= len(served)
    # The counters rebuilt at restart hold at least what the provider billed.
    assert status["spent_requests"] >= len(served)
    assert Decimal(status["spent_usd"]) >= billed(cfg, served)
    assert sum(Decimal(c) for _, c in forwarded) >= billed(cfg, served)
    # Dead processes' journals were taken over and deleted; only the live one remained.
    assert list((tmp_path / "ledger.db.journal").iterdir()) == []


def test_a_cap_holds_across_sigkills_with_memory_counters(sim: SimulatorThread, tmp_path: Path) -> None:
    name = f"cap-{uuid.uuid4().hex[:8]}"
    cap = Decimal("0.02")  # about 25 requests' bounds
    cfg = gateway_config(sim.url, tmp_path, {"name": name, "window": "day", "limit": {"usd": float(cap)}})
    replica = Replica(cfg, tmp_path, "gw").start()
    try:
        for _ in range(2):
            wave_then_kill(replica, 20, kill_after_s=0.9)
            settled_served(sim.url)
            replica.start()
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda i: call(replica.url, i), range(40)))
        assert "refused" in outcomes, "the cap must bind for this test to mean anything"
        served = settled_served(sim.url)
    finally:
        replica.stop()
    assert billed(cfg, served) <= cap
