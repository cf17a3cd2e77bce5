"""Probes, /metrics and /v1/models through a real gateway, driven by the official SDKs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import ALICE, ALICE_AKID, ALICE_SECRET, BOB, Stack, make_config
from tokenfuse.config import Config, parse_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.ledger.query import usage_totals
from tokenfuse.simulator.server import SimulatorThread

ADMIN = {"authorization": "Bearer admin-secret"}
PROMPT = "Summarise the quarterly report in three bullet points, please. " * 3
BUDGET = """
budgets:
  - {name: bob-cap, match: {principal: bob}, window: day, limit: {usd: 0.0001}}
"""


@pytest.fixture
def ops_stack(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    config = make_config(sim.url, tmp_path / "ledger.db", extra=BUDGET)
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def reconfigure(config: Config, change: Callable[[dict[str, Any]], None]) -> Config:
    data = config.model_dump(mode="json", exclude={"source"})
    change(data)
    return parse_config(json.dumps(data), "test-config.yaml")


def metrics(stack: Stack) -> dict[str, Any]:
    resp = httpx.get(f"{stack.url}/metrics", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def test_probes_answer_and_stay_out_of_the_ledger(stack: Stack) -> None:
    url = stack.url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["checks"]) == {"config", "store", "counters"}
    root = httpx.get(f"{url}/")
    assert root.status_code == 200 and root.json()["service"] == "tokenfuse"
    head = httpx.head(f"{url}/")
    assert head.status_code == 200 and head.content == b""
    assert httpx.head(f"{url}/healthz").status_code == 200
    assert httpx.post(f"{url}/healthz").status_code == 405
    assert httpx.get(f"{url}/metrics", headers=ADMIN).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {ALICE}"}).status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert stack.rows() == []
    assert stack.served() == []


def test_metrics_need_the_admin_token(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/metrics").status_code == 401
    assert httpx.get(f"{stack.url}/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    # A tokenfuse key is not the admin token.
    assert httpx.get(f"{stack.url}/metrics", headers={"authorization": f"Bearer {ALICE}"}).status_code == 401


def test_metrics_public_opens_them(sim: SimulatorThread, tmp_path: Path) -> None:
    config = reconfigure(make_config(sim.url, tmp_path / "ledger.db"), lambda d: d["server"].update(metrics_public=True))
    with GatewayThread(config) as gw:
        resp = httpx.get(f"{gw.url}/metrics")
    assert resp.status_code == 200 and "tokenfuse_requests" in resp.text


def test_readyz_reports_unreachable_counters(sim: SimulatorThread, tmp_path: Path) -> None:
    for mode, want in (("closed", 503), ("open", 200)):
        config = make_config(sim.url, tmp_path / f"{mode}.db", counters="redis://127.0.0.1:1/0",
                             extra=f"on_counter_failure: {mode}")
        with GatewayThread(config) as gw:
            resp = httpx.get(f"{gw.url}/readyz", timeout=10)
        assert resp.status_code == want, resp.text
        body = resp.json()
        assert "unreachable" in body["checks"]["counters"]["detail"]
        if want == 503:
            assert body["reason"].startswith("counters: unreachable")


def test_readyz_reports_a_missing_store(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{stack.db}{suffix}").unlink(missing_ok=True)
    import time

    time.sleep(1.1)  # the previous answer is cached for a second
    resp = httpx.get(f"{stack.url}/readyz")
    assert resp.status_code == 503
    assert resp.json()["reason"].startswith("store: cannot read the ledger store")


def _mixed_traffic(stack: Stack) -> None:
    oai = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0)
    oai.chat.completions.create(model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=40)
    list(oai.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=30, stream=True
    ))
    oai.embeddings.create(model="test-model", input=PROMPT)
    claude = anthropic.Anthropic(base_url=stack.url, api_key=ALICE, max_retries=0)
    claude.messages.create(model="test-claude", max_tokens=50, messages=[{"role": "user", "content": PROMPT}])
    with claude.messages.stream(
        model="test-claude", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
    ) as s:
        s.get_final_message()
    brt = boto3.client(
        "bedrock-runtime", endpoint_url=stack.url, region_name="us-east-1", aws_access_key_id=ALICE_AKID,
        aws_secret_access_key=ALICE_SECRET, config=BotoConfig(retries={"max_attempts": 1}),
    )
    brt.converse(modelId="test-claude", messages=[{"role": "user", "content": [{"text": PROMPT}]}],
                 inferenceConfig={"maxTokens": 40})
    events = list(brt.converse_stream(
        modelId="test-claude", messages=[{"role": "user", "content": [{"text": PROMPT}]}]
    )["stream"])
    assert "metadata" in events[-1]
    # Refusals: a budget (bob), a wrong key, an unpriced model, a path that does not exist.
    bob = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        bob.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=40)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="no-such-model-x", messages=[{"role": "user", "content": "hi"}])
    assert httpx.post(f"{stack.url}/v1/nothing", json={}).status_code == 404


def test_metrics_cost_counter_equals_the_ledger(ops_stack: Stack) -> None:
    stack = ops_stack
    _mixed_traffic(stack)
    rows = stack.rows()
    fams = metrics(stack)
    ledger_total = Decimal(usage_totals(f"sqlite:///{stack.db}")["cost_usd"])
    assert ledger_total == sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)) > 0

    # Per series, the counter is the ledger's exact sum for those labels (as a float).
    by_labels: dict[tuple[str, ...], Decimal] = {}
    for r in rows:
        k = tuple(r[c] or "" for c in ("protocol", "route", "model", "key_name", "principal", "workflow"))
        by_labels[k] = by_labels.get(k, Decimal(0)) + Decimal(r["cost_usd"])
    cost = {
        tuple(s.labels[c] for c in ("protocol", "route", "model", "key", "principal", "workflow")): s.value
        for s in fams["tokenfuse_cost_usd"].samples if s.name == "tokenfuse_cost_usd_total"
    }
    assert cost == {k: float(v) for k, v in by_labels.items()}
    total = sum((Decimal(repr(v)) for v in cost.values()), Decimal(0))
    assert abs(total - ledger_total) < Decimal("1e-12")
    assert stack.gw.gateway.ops.metrics.cost_total() == ledger_total

    requests = [s for s in fams["tokenfuse_requests"].samples if s.name == "tokenfuse_requests_total"]
    assert sum(s.value for s in requests) == len(rows)
    assert {s.labels["protocol"] for s in requests} >= {"openai", "anthropic", "bedrock"}
    ok = {(s.labels["protocol"], s.labels["route"]) for s in requests if s.labels["outcome"] == "ok"}
    assert {("bedrock", "converse"), ("bedrock", "converse_stream"), ("anthropic", "messages")} <= ok
    assert all("session" not in s.labels for f in fams.values() for s in f.samples)

    tokens = [s for s in fams["tokenfuse_tokens"].samples if s.name == "tokenfuse_tokens_total"]
    for cls in ("input_uncached", "output"):
        assert sum(s.value for s in tokens if s.labels["class"] == cls) == sum(r[cls] for r in rows)

    refusals = {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for s in fams["tokenfuse_refusals"].samples if s.name == "tokenfuse_refusals_total"
    }
    assert refusals == {
        ("refused", "budget"): 1, ("unauthorized", "unauthorized"): 1,
        ("refused", "unpriced_model"): 1, ("not_found", "not_found"): 1,
    }

    latency = fams["tokenfuse_request_duration_seconds"]
    counts = [s for s in latency.samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == len(rows)
    overhead = fams["tokenfuse_overhead_duration_seconds"]
    assert sum(s.value for s in overhead.samples if s.name.endswith("_count")) == len(rows)
    upstream = fams["tokenfuse_upstream_duration_seconds"]
    assert sum(s.value for s in upstream.samples if s.name.endswith("_count")) == sum(
        1 for r in rows if r["upstream"] is not None
    )

    budget = {s.name: s for f in fams.values() for s in f.samples if s.labels.get("budget") == "bob-cap"}
    assert budget["tokenfuse_budget_limit_usd"].value == pytest.approx(0.0001)
    assert budget["tokenfuse_budget_spent_usd"].value == 0
    assert fams["tokenfuse_counters_up"].samples[0].value == 1
    assert fams["tokenfuse_ledger_queue_depth"].samples[0].value == 0
    assert "process_resident_memory_bytes" in {s.name for f in fams.values() for s in f.samples}


def test_kill_switch_gauge(ops_stack: Stack) -> None:
    resp = httpx.post(f"{ops_stack.url}/_tokenfuse/admin/kills", headers=ADMIN,
                      json={"scope": "principal", "value": "bob", "reason": "test"})
    assert resp.status_code < 300, resp.text
    fams = metrics(ops_stack)
    active = {s.labels["scope"]: s.value for s in fams["tokenfuse_kill_switches_active"].samples}
    assert active["principal"] == 1 and active["all"] == 0


def test_openai_sdk_lists_models(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0)
    ids = [m.id for m in client.models.list()]
    # Config prices (every upstream routes them) and the catalog's OpenAI models; no Claude.
    assert "test-model" in ids and "test-claude" in ids and "gpt-4o" in ids
    assert not any(i.startswith("claude") for i in ids)
    assert ids == sorted(ids)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("claude-3-haiku")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert stack.rows() == []


def test_anthropic_sdk_lists_models(stack: Stack) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key=ALICE, max_retries=0)
    page = client.models.list(limit=5)
    assert len(page.data) == 5 and page.has_more
    every = [m.id for m in client.models.list(limit=5)]  # iterating follows the pages
    assert "claude-haiku-4-5" in every and "test-claude" in every and "gpt-4o" not in every
    assert len(every) == len(set(every)) and every == sorted(every)
    assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=stack.url, api_key="wrong", max_retries=0).models.list()
    assert stack.rows() == []


def test_models_respect_upstream_globs(sim: SimulatorThread, tmp_path: Path) -> None:
    upstream = {"name": "oai", "protocol": "openai", "base_url": f"{sim.url}/v1", "api_key": "k", "models": ["gpt-4o*"]}
    narrowed = reconfigure(make_config(sim.url, tmp_path / "ledger.db"), lambda d: d.update(upstreams=[upstream]))
    with GatewayThread(narrowed) as gw:
        ids = [m.id for m in openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0).models.list()]
        claude = httpx.get(f"{gw.url}/v1/models", headers={"x-api-key": ALICE, "anthropic-version": "2023-06-01"})
    assert ids == ["gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-mini"]
    assert claude.status_code == 200 and claude.json()["data"] == []
