"""One model identity end to end: no spelling of a model walks past its kill switch or budget.

Issue 8 item 9: pricing normalised the model id but kill switches, per-model
budgets and routing compared the raw string, so `TEST-MODEL`, ` test-model `
or a dated `test-model-2024-01-01` were served with the switch on or the
budget at zero.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.config import parse_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.gateway.upstream import Router
from tokenfuse.simulator.server import SimulatorThread

MSG = [{"role": "user", "content": "summarise the incident"}]
ADMIN = {"authorization": "Bearer admin-secret"}
SPELLINGS = ["TEST-MODEL", " test-model ", "Test-Model\t", "test-model-2024-01-01", "test-model@20240101"]


def openai_call(stack: Stack, model: str) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0)
    client.chat.completions.create(model=model, messages=MSG, max_tokens=8)  # type: ignore[arg-type]


def anthropic_call(stack: Stack, model: str) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key=ALICE, max_retries=0)
    client.messages.create(model=model, messages=MSG, max_tokens=8)  # type: ignore[arg-type]


@pytest.fixture
def budget_stack(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    extra = "budgets:\n  - {name: test-model-frozen, match: {model: test-model}, window: total, limit: {usd: 0}}\n"
    config = make_config(sim.url, tmp_path / "ledger.db", extra)
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def test_a_model_kill_switch_refuses_every_spelling_of_the_model(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.url}/_tokenfuse/admin/kills", json={"scope": "model", "value": "test-model"}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    for model in SPELLINGS:
        # Pricing resolves each of these to the killed model's entry...
        assert stack.gw.gateway.prices.lookup(model) == stack.gw.gateway.prices.lookup("test-model"), model
        # ...so the kill switch refuses each of them, in both protocols.
        with pytest.raises(openai.PermissionDeniedError) as oai:
            openai_call(stack, model)
        assert "kill switch" in oai.value.message
        with pytest.raises(anthropic.PermissionDeniedError):
            anthropic_call(stack, model)
    assert stack.served() == []  # nothing reached the provider
    openai_call(stack, "test-claude")  # another model is still served
    assert len(stack.served()) == 1


def test_a_kill_set_with_another_spelling_covers_the_model(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.url}/_tokenfuse/admin/kills", json={"scope": "model", "value": " TEST-Model "}, headers=ADMIN
    )
    assert r.status_code == 201 and r.json()["kill_switch"]["value"] == "test-model"
    with pytest.raises(openai.PermissionDeniedError):
        openai_call(stack, "test-model")


def test_a_zero_per_model_budget_refuses_every_spelling_of_the_model(budget_stack: Stack) -> None:
    for model in ["test-model", *SPELLINGS]:
        with pytest.raises(openai.APIStatusError) as exc:
            openai_call(budget_stack, model)
        assert exc.value.status_code in (402, 403, 429), (model, exc.value.status_code)
        assert "test-model-frozen" in str(exc.value.message) or "budget" in str(exc.value.message).lower()
    assert budget_stack.served() == []
    openai_call(budget_stack, "test-claude")  # the budget is per model
    assert len(budget_stack.served()) == 1


def test_refusals_are_recorded(stack: Stack) -> None:
    httpx.post(
        f"{stack.url}/_tokenfuse/admin/kills", json={"scope": "model", "value": "test-model"}, headers=ADMIN
    )
    with pytest.raises(openai.PermissionDeniedError):
        openai_call(stack, "TEST-MODEL")
    deadline = time.monotonic() + 5
    while not (rows := stack.rows()):
        assert time.monotonic() < deadline
    assert rows[-1]["outcome"] == "killed"


# -- routing ------------------------------------------------------------------------


def router_for(models: str) -> Router:
    return Router(
        parse_config(
            f"""
store: sqlite:///unused.db
upstreams:
  - {{name: pinned, protocol: bedrock, base_url: "http://a", region: us-east-1, models: {models}}}
  - {{name: rest, protocol: bedrock, base_url: "http://b", region: us-east-1}}
""",
            "router.yaml",
        )
    )


@pytest.mark.parametrize(
    "sent",
    [
        "claude-opus-4-6",
        "CLAUDE-OPUS-4-6",
        "us.anthropic.claude-opus-4-6-v1",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1",
        "anthropic.claude-opus-4-6-v1%3A0",
    ],
)
@pytest.mark.parametrize(
    "models", ['["claude-opus-4-6"]', '["*Opus-4-6*"]', '["us.anthropic.claude-opus-4-6*"]']
)
def test_every_spelling_of_a_model_routes_to_the_same_upstream(sent: str, models: str) -> None:
    router = router_for(models)
    picked = router.pick("bedrock", sent)
    assert picked is not None and picked.name == "pinned"
    other = router.pick("bedrock", "amazon.nova-pro-v1:0")
    assert other is not None and other.name == "rest"


def test_a_raw_bedrock_glob_still_routes_what_it_names() -> None:
    router = router_for('["us.*"]')
    picked = router.pick("bedrock", "us.amazon.nova-pro-v1:0")
    assert picked is not None and picked.name == "pinned"
    picked = router.pick("bedrock", "amazon.nova-pro-v1:0")
    assert picked is not None and picked.name == "rest"


def test_router_cache_does_not_hold_oversized_names() -> None:
    router = router_for('["claude-*"]')
    for i in range(20):
        router.pick("bedrock", f"{i}" + "x" * 100_000)
    assert router._cache == {}
