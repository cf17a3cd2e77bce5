"""Issue 13, budget-aware routing, through the real gateway and the provider simulator.

A budget crossing 80% moves a workflow from an Opus-priced model to a
Haiku-priced one instead of refusing it; the ledger records both models; the
budget still holds (the simulator's own billing is the judge); a header rule
routes light steps; a kill switch on the target model refuses routed requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig

from tests.gateway.conftest import ALICE, ALICE_AKID, ALICE_SECRET, BOB, Stack, make_config
from tokenfuse.config import PriceOverride
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.usage import TOKEN_CLASSES, Usage

LIMIT = Decimal("0.20")
ROUTING = f"""
budgets:
  - {{name: droid-daily, match: {{workflow: droid}}, window: day, limit: {{usd: {LIMIT}}}}}
routing:
  - name: save-budget
    match: {{workflow: droid}}
    from: "big-*"
    to: small-model
    when: {{budget: droid-daily, above_pct: 80}}
  - name: light-steps
    match: {{workflow: batch, protocol: [openai, anthropic]}}
    from: big-model
    to: small-model
    when: {{header: {{x-step: light}}}}
  - name: bedrock-small
    match: {{key: alice-droid, protocol: bedrock}}
    from: big-model
    to: small-model
"""
# Opus-like and Haiku-like rates, USD per million tokens.
PRICES = {
    "big-model": PriceOverride(input=Decimal(15), output=Decimal(75)),
    "small-model": PriceOverride(input=Decimal(1), output=Decimal(5)),
}


@pytest.fixture
def routed(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    base = make_config(sim.url, tmp_path / "ledger.db", ROUTING)
    config = base.model_copy(update={"prices": {**base.prices, **PRICES}})
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        st.sim_config(output_tokens=200)
        yield st
    st.sim_config(output_tokens=64)


def billed(stack: Stack) -> Decimal:
    """What the simulator served, priced at the config's rates: what the provider would bill."""
    total = Decimal(0)
    for rec in stack.served():
        price = stack.gw.gateway.prices.lookup(rec["model"])
        assert price is not None, rec["model"]
        total += price.cost(Usage(**{c: rec["usage"][c] for c in TOKEN_CLASSES}))
    return total


def test_a_budget_crossing_80_percent_moves_the_workflow_to_the_small_model(routed: Stack) -> None:
    client = anthropic.Anthropic(base_url=routed.url, api_key=ALICE, max_retries=0)
    served_as: list[tuple[str, str | None]] = []
    refusal: anthropic.APIStatusError | None = None
    for i in range(400):
        try:
            raw = client.messages.with_raw_response.create(
                model="big-model", max_tokens=200, messages=[{"role": "user", "content": f"step {i}: refactor"}]
            )
        except anthropic.APIStatusError as exc:
            refusal = exc
            break
        served_as.append((raw.parse().model, raw.headers.get("x-tokenfuse-routed")))
    # The budget ran out in the end: routing postponed the refusal, it did not remove the cap.
    assert refusal is not None and "droid-daily" in refusal.message, refusal
    assert refusal.response.headers["x-tokenfuse-routed"] == "big-model -> small-model (rule save-budget)"
    first_routed = next(i for i, (model, _) in enumerate(served_as) if model == "small-model")
    assert all(model == "big-model" and hdr is None for model, hdr in served_as[:first_routed])
    assert all(
        model == "small-model" and hdr == "big-model -> small-model (rule save-budget)"
        for model, hdr in served_as[first_routed:]
    )
    assert first_routed >= 5 and len(served_as) - first_routed >= 20  # both models served a real share

    rows = routed.rows()
    ok = [r for r in rows if r["outcome"] == "ok"]
    assert [r["model"] for r in ok] == [m for m, _ in served_as]
    assert all(r["requested_model"] is None for r in ok[:first_routed])
    assert all(r["requested_model"] == "big-model" for r in ok[first_routed:])
    assert rows[-1]["outcome"] == "refused" and rows[-1]["model"] == "small-model"
    assert rows[-1]["requested_model"] == "big-model"
    # Routed once the settled spend reached 80%, not before and not a request later.
    big = [Decimal(r["cost_usd"]) for r in ok[:first_routed]]
    assert sum(big[:-1]) < LIMIT * Decimal("0.8") <= sum(big)
    # No overshoot: what the provider billed is within the budget and is what the ledger says.
    spent = billed(routed)
    assert spent <= LIMIT, spent
    assert spent == sum(Decimal(r["cost_usd"]) for r in ok)
    assert {rec["model"] for rec in routed.served()} == {"big-model", "small-model"}


def test_a_header_rule_routes_light_steps_only(routed: Stack) -> None:
    bob = openai.OpenAI(base_url=f"{routed.url}/v1", api_key=BOB, max_retries=0)
    msg = [{"role": "user", "content": "classify this ticket"}]
    light = bob.chat.completions.with_raw_response.create(
        model="big-model", messages=msg, max_tokens=20, extra_headers={"X-Step": "light"}  # type: ignore[arg-type]
    )
    assert light.parse().model == "small-model"
    assert light.headers["x-tokenfuse-routed"] == "big-model -> small-model (rule light-steps)"
    heavy = bob.chat.completions.with_raw_response.create(
        model="big-model", messages=msg, max_tokens=20, extra_headers={"X-Step": "heavy"}  # type: ignore[arg-type]
    )
    assert heavy.parse().model == "big-model" and "x-tokenfuse-routed" not in heavy.headers
    # The rule matches workflow batch only: Alice's droid (under 80% of its budget) is served as asked.
    alice = openai.OpenAI(base_url=f"{routed.url}/v1", api_key=ALICE, max_retries=0)
    same = alice.chat.completions.create(
        model="big-model", messages=msg, max_tokens=20, extra_headers={"X-Step": "light"}  # type: ignore[arg-type]
    )
    assert same.model == "big-model"
    rows = routed.rows()
    assert [(r["model"], r["requested_model"]) for r in rows] == [
        ("small-model", "big-model"), ("big-model", None), ("big-model", None)
    ]
    # Priced as the model served.
    assert Decimal(rows[0]["cost_usd"]) < Decimal(rows[1]["cost_usd"])


def test_a_kill_switch_on_the_target_refuses_routed_requests(routed: Stack) -> None:
    r = httpx.post(
        f"{routed.url}/_tokenfuse/admin/kills",
        json={"scope": "model", "value": "small-model", "reason": "target model misbehaving"},
        headers={"authorization": "Bearer admin-secret"},
        timeout=5,
    )
    assert r.status_code in (200, 201), r.text
    bob = anthropic.Anthropic(base_url=routed.url, api_key=BOB, max_retries=0)
    msg = [{"role": "user", "content": "light step"}]
    deadline = time.monotonic() + 5
    while True:
        try:
            bob.messages.create(model="big-model", max_tokens=20, messages=msg, extra_headers={"x-step": "light"})  # type: ignore[arg-type]
        except anthropic.PermissionDeniedError as exc:
            assert "target model misbehaving" in exc.message
            assert exc.response.headers["x-tokenfuse-routed"] == "big-model -> small-model (rule light-steps)"
            break
        assert time.monotonic() < deadline, "the kill switch never applied to the routed model"
        time.sleep(0.05)
    # The same request unrouted is served: the switch stops the model served, not the one asked for.
    assert bob.messages.create(model="big-model", max_tokens=20, messages=msg).model == "big-model"  # type: ignore[arg-type]
    killed = [r for r in routed.rows() if r["outcome"] == "killed"]
    assert killed and all(r["model"] == "small-model" and r["requested_model"] == "big-model" for r in killed)


def test_bedrock_converse_is_routed_through_the_url_path(routed: Stack) -> None:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=routed.url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    out = client.converse(
        modelId="big-model", messages=[{"role": "user", "content": [{"text": "hello"}]}],
        inferenceConfig={"maxTokens": 20},
    )
    assert out["ResponseMetadata"]["HTTPHeaders"]["x-tokenfuse-routed"] == "big-model -> small-model (rule bedrock-small)"
    assert [rec["model"] for rec in routed.served()] == ["small-model"]
    row = routed.rows()[-1]
    assert (row["outcome"], row["model"], row["requested_model"]) == ("ok", "small-model", "big-model")
