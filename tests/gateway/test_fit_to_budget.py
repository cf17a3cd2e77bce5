"""Fit to budget through the real gateway: lowered max_tokens, the header, refusals that say what fits,
tighter bounds for a continued conversation, and the Claude-Code-shaped loop of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"x-api-key": ALICE, "anthropic-version": "2023-06-01"}


def loop_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("claude_code_loop", ROOT / "bench" / "claude_code_loop.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def budget(usd: str, extra: str = "") -> str:
    return f"""
budgets:
  - {{name: daily, match: {{principal: alice}}, window: day, limit: {{usd: {usd}}}}}
{extra}
"""


@pytest.fixture
def gateway(sim: SimulatorThread, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    extra: str = request.param
    config = make_config(sim.url, tmp_path / "ledger.db", extra)
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def claude(prompt_bytes: int = 4000, max_tokens: int = 64000) -> dict[str, Any]:
    return {
        "model": "test-claude",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x" * prompt_bytes}],
    }


@pytest.mark.parametrize("gateway", [budget("0.10")], indirect=True)
def test_a_request_too_big_for_the_budget_is_forwarded_with_the_max_tokens_that_fits(gateway: Stack) -> None:
    gateway.sim_config(output_tokens=40_000)  # the simulator answers up to the limit it is sent
    # test-claude without a cache marker: input bound ~4,100 bytes at $3/M; output $15/M.
    r = httpx.post(f"{gateway.url}/v1/messages", json=claude(), headers=HEADERS)
    assert r.status_code == 200, r.text
    granted, _, requested = r.headers["x-tokenfuse-max-tokens"].partition("; requested=")
    assert requested == "32000"  # 64,000 clamped to the gateway's cap first
    # ($0.10 - ~$0.0123 of input) / $15 per million is ~5,840 output tokens.
    assert 5_700 < int(granted) < 5_900
    (served,) = gateway.served()
    assert served["usage"]["output"] == int(granted)
    assert r.json()["stop_reason"] == "max_tokens"  # the provider tells the agent it was cut
    assert gateway.price_of("test-claude", served["usage"]) <= Decimal("0.10")


@pytest.mark.parametrize(
    "gateway", [budget("0.10", "defaults: {max_tokens_cap: 32000, lower_max_tokens: false}")], indirect=True
)
def test_a_key_that_forbids_lowering_is_refused_with_the_limit_that_would_fit(gateway: Stack) -> None:
    r = httpx.post(f"{gateway.url}/v1/messages", json=claude(), headers=HEADERS)
    assert r.status_code != 200
    message = r.json()["error"]["message"]
    assert "Budget 'daily' refused" in message and "would fit" in message
    assert not gateway.served()


@pytest.mark.parametrize("gateway", [budget("0.01")], indirect=True)
def test_when_even_the_floor_does_not_fit_the_refusal_names_the_reset(gateway: Stack) -> None:
    r = httpx.post(f"{gateway.url}/v1/messages", json=claude(prompt_bytes=3000), headers=HEADERS)
    assert r.status_code != 200
    message = r.json()["error"]["message"]
    assert "would fit (below the gateway's floor of 1024" in message or "Nothing fits until" in message


@pytest.mark.parametrize("gateway", [budget("0.30")], indirect=True)
def test_a_continued_conversation_is_bounded_by_the_recorded_prefix(gateway: Stack) -> None:
    gateway.sim_config(output_tokens=40_000)
    system = [{"type": "text", "text": "rules " * 10_000, "cache_control": {"type": "ephemeral"}}]
    first = {"model": "test-claude", "max_tokens": 100, "system": system,
             "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    r = httpx.post(f"{gateway.url}/v1/messages", json=first, headers=HEADERS)
    assert r.status_code == 200, r.text
    spent = gateway.price_of("test-claude", gateway.served()[-1]["usage"])  # ~15,000 tokens written: ~$0.058
    second = {**first, "max_tokens": 32000, "messages": [
        *first["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": r.json()["content"][0]["text"]}]},
        {"role": "user", "content": [{"type": "text", "text": "y" * 3000}]},
    ]}
    r = httpx.post(f"{gateway.url}/v1/messages", json=second, headers=HEADERS)
    # Bounded by bytes (63,000+ at $3.75/M = $0.237) only ~300 output tokens would
    # fit the ~$0.242 left, under the floor: refused. With the prefix's exact count
    # (+ the new turns' bytes) the input bound is ~19,000 tokens and ~11,000 fit.
    assert r.status_code == 200, r.text
    granted = int(r.headers["x-tokenfuse-max-tokens"].partition(";")[0])
    input_bound = (Decimal("0.30") - spent - granted * Decimal("0.000015")) / Decimal("0.00000375")
    billed = gateway.served()[-1]["usage"]
    billed_input = billed["input_uncached"] + billed["cache_read"] + billed["cache_write"]
    assert billed_input <= input_bound < 20_000


@pytest.mark.parametrize("gateway", [budget("2")], indirect=True)
def test_a_claude_code_loop_runs_until_what_is_left_is_within_1_25x_of_the_next_turns_true_bound(
    gateway: Stack,
) -> None:
    bench = loop_bench()
    gateway.sim_config(output_tokens=bench.OUTPUT_TOKENS)
    bench.KEY = ALICE
    bench.ADMIN = "admin-secret"
    result = asyncio.run(bench.run(gateway.url, 1, Decimal(2)))
    assert result.spent <= Decimal(2)
    assert result.turns > 30 and result.lowered > 0
    (refusal,) = result.refusals
    assert refusal.reserved == 0
    assert refusal.left <= Decimal("1.25") * refusal.own_bound
    billed = sum((Decimal(str(r["cost_usd"])) for r in gateway.rows()), Decimal(0))
    assert billed == result.spent
