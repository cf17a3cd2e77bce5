"""Issue 8, findings 7 and 10: the cap holds when the Redis counters are lost or unreachable.

Two real gateways share a private Redis (a `redis-server` this test starts, so
it can flush and kill it without touching anyone else's keys) and one ledger;
the simulator bills what it generates. Whatever happens to Redis, what the
simulator billed stays within the cap.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import unavailable
from tests.gateway.conftest import ALICE, make_config
from tests.gateway.replicas import free_port
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.pricing import PriceBook
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.usage import Usage

pytestmark = pytest.mark.socket

CAP = Decimal("0.50")
PROMPT = "Plan the next refactoring step for the billing module and list the risks. " * 20
CLASSES = ("input_uncached", "cache_read", "cache_write", "cache_write_1h", "output")


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        # ~$0.003 billed per call; some latency so that requests are in flight when Redis goes.
        httpx.post(f"{s.url}/_sim/config", json={"output_tokens": 120, "latency_ms": 30}).raise_for_status()
        yield s


class PrivateRedis:
    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server binary", "not on PATH")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                self.client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.client.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    try:
        yield r
    finally:
        r.stop()


def billed(sim_url: str, book: PriceBook) -> tuple[Decimal, int]:
    total = Decimal(0)
    data = httpx.get(f"{sim_url}/_sim/served", timeout=10).json()["requests"]
    for rec in data:
        price = book.lookup(rec["model"])
        assert price is not None
        total += price.cost(Usage(**{c: rec["usage"][c] for c in CLASSES}))
    return total, len(data)


class Load:
    """Calls through two gateways in turn; counts admitted calls and 503 refusals."""

    def __init__(self, urls: list[str]) -> None:
        self.clients = [
            openai.OpenAI(base_url=f"{u}/v1", api_key=ALICE, max_retries=0, timeout=30) for u in urls
        ]
        self.unavailable = 0
        self.lock = threading.Lock()

    def __call__(self, i: int) -> bool:
        client = self.clients[i % len(self.clients)]
        try:
            if i % 2:
                client.chat.completions.create(
                    model="test-claude", messages=[{"role": "user", "content": PROMPT}], max_tokens=120
                )
            else:
                for _ in client.chat.completions.create(
                    model="test-claude",
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=120,
                    stream=True,
                ):
                    pass
            return True
        except openai.RateLimitError:
            return False
        except openai.InternalServerError as exc:
            assert exc.status_code == 503 and "counters" in exc.message, exc
            with self.lock:
                self.unavailable += 1
            return False

    def run(self, n: int, concurrency: int, start: int = 0) -> list[bool]:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(self, range(start, start + n)))


def gateways(sim: SimulatorThread, tmp: Path, counters: str, extra: str) -> list[GatewayThread]:
    text = f"""
budgets:
  - {{name: cap, match: {{principal: alice}}, window: day, limit: {{usd: {CAP}}}}}
reservation_ttl_s: 30
{extra}
"""
    return [
        GatewayThread(make_config(sim.url, tmp / "ledger.db", text, counters=counters)).start()
        for _ in range(2)
    ]


def test_redis_losing_its_data_mid_load_never_lets_the_cap_slip(
    sim: SimulatorThread, tmp_path: Path, private_redis: PrivateRedis
) -> None:
    gws = gateways(sim, tmp_path, private_redis.url, "")
    book = gws[0].gateway.prices
    load = Load([g.url for g in gws])
    try:
        # Spend about half of the cap.
        i = 0
        while billed(sim.url, book)[0] < CAP / 2:
            load.run(16, 8, i)
            i += 16
        before, n_before = billed(sim.url, book)
        epoch = private_redis.client.get("tokenfuse:epoch")
        assert epoch is not None
        # Keep calling while Redis loses everything (a restart without persistence,
        # FLUSHALL): requests are in flight on both gateways when it happens.
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.extend(load.run(400, 16, i)))
        worker.start()
        while billed(sim.url, book)[1] < n_before + 10:
            time.sleep(0.01)
        assert private_redis.client.flushall()
        worker.join()
        # After the load: a few more, one at a time, to show the cap stays shut.
        result += load.run(20, 1, i + 400)
    finally:
        for g in gws:
            g.stop()
    # The gateways noticed the loss and seeded a new epoch from the ledger.
    assert private_redis.client.get("tokenfuse:epoch") not in (None, epoch)
    total, n = billed(sim.url, book)
    print(
        f"\nstore loss: billed ${total} of ${CAP} ({total / CAP:.1%}), {n} calls served, "
        f"${before} before the flush, {load.unavailable} refused while re-seeding"
    )
    assert total <= CAP
    assert sum(result) > 0 and not all(result), (
        "the cap must bind after the flush for this test to mean anything"
    )
    # The re-seeded counters still admit work up to the cap (not simply refusing).
    assert total >= CAP * Decimal("0.8"), total


@pytest.mark.parametrize("spent_first", ["exhausted", "half"])
def test_fail_open_admits_only_a_share_of_the_last_headroom(
    sim: SimulatorThread, tmp_path: Path, private_redis: PrivateRedis, spent_first: str
) -> None:
    gws = gateways(sim, tmp_path, private_redis.url, "on_counter_failure: open\ncounters_replicas: 2")
    book = gws[0].gateway.prices
    load = Load([g.url for g in gws])
    try:
        i = 0
        if spent_first == "exhausted":
            # Finding 10: two replicas exhaust the cap, then Redis dies.
            while all(load.run(16, 8, i)):
                i += 16
            i += 16
        else:
            while billed(sim.url, book)[0] < CAP / 2:
                load.run(16, 8, i)
                i += 16
        before, _ = billed(sim.url, book)
        private_redis.stop()
        during = load.run(200, 8, i)
    finally:
        for g in gws:
            g.stop()
    total, _ = billed(sim.url, book)
    print(
        f"\nfail-open ({spent_first}): billed ${total} of ${CAP} ({total / CAP:.1%}); ${before} before Redis died, "
        f"{sum(during)} of {len(during)} admitted during the outage, {load.unavailable} refused with 503"
    )
    assert total <= CAP
    if spent_first == "half":
        assert sum(during) > 0, "fail-open still admits within its share of the headroom"
