"""Two gateways sharing one PostgreSQL store: one ledger, one set of kill switches."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai

from tests.gateway.conftest import ALICE, BOB, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.ledger.query import usage_totals
from tokenfuse.simulator.server import SimulatorThread

MSG = [{"role": "user", "content": "summarise the incident"}]


def test_two_gateways_share_ledger_and_kill_switches(sim: SimulatorThread, pg_url: str, tmp_path: Path) -> None:
    cfg = make_config(sim.url, tmp_path / "unused.db").model_copy(update={"store": pg_url})
    with GatewayThread(cfg) as a, GatewayThread(cfg) as b:
        for gw, key in ((a, ALICE), (b, BOB), (a, BOB)):
            openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
                model="test-model", messages=MSG, max_tokens=8  # type: ignore[arg-type]
            )
        r = httpx.post(
            f"{a.url}/_tokenfuse/admin/kills",
            json={"scope": "principal", "value": "bob", "reason": "over budget elsewhere"},
            headers={"authorization": "Bearer admin-secret"},
        )
        assert r.status_code in (200, 201), r.text
        client_b = openai.OpenAI(base_url=f"{b.url}/v1", api_key=BOB, max_retries=0)
        deadline = time.monotonic() + 3
        served_before_kill = 0
        while True:
            try:
                client_b.chat.completions.create(model="test-model", messages=MSG, max_tokens=8)  # type: ignore[arg-type]
                served_before_kill += 1  # b had not polled the switch yet
            except openai.PermissionDeniedError as exc:
                assert "over budget elsewhere" in exc.message
                break
            assert time.monotonic() < deadline, "the kill switch never reached the other gateway"
            time.sleep(0.05)
        a.flush(10)
        b.flush(10)
    totals = usage_totals(pg_url)
    assert totals["by_model"]["test-model"]["output"] == 8 * (3 + served_before_kill)
    bob = usage_totals(pg_url, principal="bob")
    assert bob["refused"] >= 1 and Decimal(bob["cost_usd"]) > 0
    alice = usage_totals(pg_url, principal="alice")
    assert alice["requests"] == 1
