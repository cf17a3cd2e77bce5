"""A real simulator and a real gateway on loopback, driven by the official SDKs."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenfuse.config import Config, parse_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.ledger.schema import connect
from tokenfuse.simulator.server import SimulatorThread

ALICE = "tf-alice-secret-0001"
BOB = "tf-bob-secret-0002"
ALICE_AKID = "AKIATFALICE0000001"
ALICE_SECRET = "alice/aws/secret/key/0000000000000000000"

PRICES = """
prices:
  test-model: {input: 1.00, output: 10.00, cache_read: 0.10, cache_write: 1.25, cache_write_1h: 2.00}
  test-claude: {input: 3.00, output: 15.00, cache_read: 0.30, cache_write: 3.75, cache_write_1h: 6.00}
"""


def make_config(sim_url: str, db: Path, extra: str = "", counters: str = "memory") -> Config:
    text = f"""
server: {{host: 127.0.0.1, port: 0, admin_token: admin-secret}}
store: sqlite:///{db}
counters: {counters}
kill_poll_ms: 100
ledger: {{batch_interval_ms: 20}}
upstreams:
  - {{name: openai, protocol: openai, base_url: "{sim_url}/v1", api_key: sk-upstream-openai}}
  - {{name: anthropic, protocol: anthropic, base_url: "{sim_url}", api_key: upstream-anthropic}}
  - {{name: bedrock, protocol: bedrock, base_url: "{sim_url}", region: us-east-1,
     aws_access_key_id: AKIAUPSTREAM00000000, aws_secret_access_key: upstream-secret}}
keys:
  - {{name: alice-droid, key: "{ALICE}", principal: alice, workflow: droid,
     aws_access_key_id: {ALICE_AKID}, aws_secret_access_key: "{ALICE_SECRET}"}}
  - {{name: bob-batch, key: "{BOB}", principal: bob, workflow: batch}}
{PRICES}
defaults: {{max_tokens: 256, max_tokens_cap: 32000}}
{extra}
"""
    return parse_config(text, "test-config.yaml")


@dataclass
class Stack:
    sim_url: str
    gw: GatewayThread
    db: Path

    @property
    def url(self) -> str:
        return self.gw.url

    def served(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.sim_url}/_sim/served") as resp:
            data = json.load(resp)
        requests: list[dict[str, Any]] = data["requests"]
        return requests

    def reset_sim(self) -> None:
        req = urllib.request.Request(f"{self.sim_url}/_sim/reset", data=b"{}", method="POST")
        urllib.request.urlopen(req).close()

    def sim_config(self, **changes: Any) -> None:
        req = urllib.request.Request(
            f"{self.sim_url}/_sim/config", data=json.dumps(changes).encode(), method="POST",
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(req).close()

    def rows(self) -> list[dict[str, Any]]:
        assert self.gw.flush(10.0)
        conn = connect(f"sqlite:///{self.db}")
        cur = conn.execute("SELECT * FROM requests ORDER BY rowid")
        names = [d[0] for d in cur.description]
        out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        conn.close()
        return out

    def price_of(self, model: str, usage: dict[str, int]) -> Decimal:
        from tokenfuse.usage import TOKEN_CLASSES, Usage

        price = self.gw.gateway.prices.lookup(model)
        assert price is not None, model
        assert set(usage) <= set(TOKEN_CLASSES), usage
        counts = Usage()
        for c in TOKEN_CLASSES:
            setattr(counts, c, usage.get(c, 0))
        return Decimal(price.cost(counts))


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


@pytest.fixture
def stack(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    config = make_config(sim.url, tmp_path / "ledger.db")
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st
    st.sim_config(fault=None)
