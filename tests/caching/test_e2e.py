"""Done-when: a 30-turn agent loop without cache markers, through the gateway
with auto-caching, costs at most 40% of the same loop without it, by the
simulator's own billing under the providers' caching rules. And the cache
doctor names the cause of a cache that does not engage, through the guard path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.gateway.conftest import ALICE, ALICE_AKID, ALICE_SECRET, BOB, Stack, make_config
from tokenfuse.caching.report import build, render
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.app import Simulator
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.state import SimConfig

TURNS = 30
SONNET = "claude-sonnet-4-5"
BEDROCK_SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
# ~1,700 simulator tokens: above Sonnet's 1,024-token minimum even by the gateway's cautious estimate.
SYSTEM = "You are a careful coding agent. Follow the repository's conventions and run the tests. " * 80
TOOL_OUTPUT = "ok  tests/test_module.py::test_case PASSED [ 42%] " * 24  # ~1.2 kB per tool result


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def sim(clock: Clock) -> Iterator[SimulatorThread]:
    app = Simulator(SimConfig(cache_rules="provider", output_tokens=64), clock=clock)
    with SimulatorThread(app=app) as s:
        yield s


@pytest.fixture
def stack(sim: SimulatorThread, clock: Clock, tmp_path: Path) -> Iterator[Stack]:
    # alice (workflow droid) gets auto-caching; bob (workflow batch) does not.
    extra = "caching: {auto: [{workflow: droid}]}\nguards: {cache_miss: {enabled: false}, context_growth: {enabled: false}}"
    config = make_config(sim.url, tmp_path / "ledger.db", extra)
    with GatewayThread(config) as gw:
        gw.gateway.caching.clock = clock
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def _cost(stack: Stack, since: int) -> Decimal:
    return sum(
        (stack.price_of(r["model"], r["usage"]) for r in stack.served()[since:]), Decimal(0)
    )


def _anthropic_loop(stack: Stack, clock: Clock, key: str, gap_s: float = 20.0) -> list[dict[str, int]]:
    client = anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)
    tools = [
        {"name": "run_tests", "description": "Run the test suite.", "input_schema": {"type": "object"}},
        {"name": "read_file", "description": "Read a file.", "input_schema": {"type": "object"}},
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test in tests/test_module.py."}]
    usages = []
    for turn in range(TURNS):
        reply = client.messages.create(
            model=SONNET, max_tokens=64, system=SYSTEM, tools=tools, messages=messages  # type: ignore[arg-type]
        )
        usages.append(reply.usage.model_dump())
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply.content[0].text}]})  # type: ignore[union-attr]
        messages.append({"role": "user", "content": [{"type": "text", "text": f"turn {turn}: {TOOL_OUTPUT}"}]})
        clock.now += gap_s
    return usages


def _converse_loop(stack: Stack, clock: Clock, gap_s: float = 20.0) -> list[dict[str, int]]:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=stack.url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"text": "Fix the failing test."}]}]
    usages = []
    for turn in range(TURNS):
        out = client.converse(
            modelId=BEDROCK_SONNET, system=[{"text": SYSTEM}], messages=messages,
            inferenceConfig={"maxTokens": 64},
        )
        usages.append(out["usage"])
        messages.append(out["output"]["message"])
        messages.append({"role": "user", "content": [{"text": f"turn {turn}: {TOOL_OUTPUT}"}]})
        clock.now += gap_s
    return usages


def test_anthropic_sdk_loop_costs_at_most_40_percent(stack: Stack, clock: Clock) -> None:
    _anthropic_loop(stack, clock, BOB)  # not in a caching scope: forwarded unmarked
    plain = _cost(stack, 0)
    assert all(r["usage"]["cache_read"] == 0 for r in stack.served())
    stack.reset_sim()
    usages = _anthropic_loop(stack, clock, ALICE)
    cached = _cost(stack, 0)
    assert cached <= plain * Decimal("0.40"), (cached, plain, cached / plain)
    print(f"anthropic: cached ${cached} vs plain ${plain} = {cached / plain:.1%}")
    # From the second turn on, every turn reads the previous turn's prompt.
    assert all(u["cache_read_input_tokens"] > 0 for u in usages[1:])
    rows = [r for r in stack.rows() if r["key_name"] == "alice-droid"]
    assert sum(r["cache_read"] for r in rows) == sum(u["cache_read_input_tokens"] for u in usages)
    doctor = [f for f in stack.gw.gateway.guards.recent() if f["guard"] == "cache_doctor"]
    # The unmarked loop is diagnosed; the auto-cached one is not.
    assert [(f["key"], f["cause"]) for f in doctor] == [("bob-batch", "no_marker")]
    # The ledger: each row's saving against the same request uncached, summed per workflow.
    saved = sum((Decimal(r["cache_saved_usd"]) for r in rows), Decimal(0))
    ledger_cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    assert Decimal(rows[0]["cache_saved_usd"]) < 0  # the first turn only writes: caching cost more
    report = build(f"sqlite:///{stack.db}")
    by_workflow = {w.workflow: w for w in report.workflows}
    assert by_workflow["droid"].saved_usd == saved > ledger_cost  # saved more than it cost
    assert by_workflow["batch"].saved_usd == 0
    assert [(c.key, c.cause) for c in report.conversations] == [("bob-batch", "no_marker")]
    assert "no_marker" in render(report) and "droid" in render(report)


def test_boto3_converse_loop_costs_at_most_40_percent(stack: Stack, clock: Clock) -> None:
    gateway = stack.gw.gateway
    gateway.caching.reconfigure(gateway.config.caching.model_copy(update={"auto": []}))
    _converse_loop(stack, clock)
    plain = _cost(stack, 0)
    stack.reset_sim()
    doctor_before = len([f for f in gateway.guards.recent() if f["guard"] == "cache_doctor"])
    gateway.caching.reconfigure(gateway.config.caching)
    usages = _converse_loop(stack, clock)
    cached = _cost(stack, 0)
    assert cached <= plain * Decimal("0.40"), (cached, plain, cached / plain)
    print(f"converse: cached ${cached} vs plain ${plain} = {cached / plain:.1%}")
    assert sum(1 for u in usages if u.get("cacheReadInputTokens", 0) > 0) >= TURNS - 5
    assert len([f for f in gateway.guards.recent() if f["guard"] == "cache_doctor"]) == doctor_before


def test_slow_agent_gets_one_hour_writes_and_still_reads(stack: Stack, clock: Clock) -> None:
    usages = _anthropic_loop(stack, clock, ALICE, gap_s=420.0)  # 7 minutes between turns
    served = stack.served()
    assert served[0]["usage"]["cache_write"] > 0  # no gap seen yet: 5-minute writes
    assert all(r["usage"]["cache_write_1h"] > 0 for r in served[2:])
    assert all(u["cache_read_input_tokens"] > 0 for u in usages[2:])


def test_verification_stops_injection_when_the_cache_does_not_engage(stack: Stack, clock: Clock) -> None:
    """A system prompt with a timestamp: injected breakpoints never read; the doctor names it and injection stops."""
    client = anthropic.Anthropic(base_url=stack.url, api_key=ALICE, max_retries=0)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test."}]
    for turn in range(4):
        client.messages.create(
            model=SONNET, max_tokens=64, system=f"Now: 2026-11-23T13:{turn:02d}:00Z. {SYSTEM}", messages=messages  # type: ignore[arg-type]
        )
        messages.append({"role": "assistant", "content": "working"})
        messages.append({"role": "user", "content": f"turn {turn}: {TOOL_OUTPUT}"})
        clock.now += 20
    findings = [f for f in stack.gw.gateway.guards.recent() if f["guard"] == "cache_doctor"]
    assert len(findings) == 1, findings
    f = findings[0]
    assert f["kind"] == "verification_failed" and f["cause"] == "prefix_changes"
    assert f["block"] == "system[0]" and f["span_offset"] == len("Now: 2026-11-23T13:0")
    served = stack.served()
    assert served[1]["usage"]["cache_write"] > 0  # injected, written, not read
    assert served[2]["usage"]["cache_write"] == 0 and served[3]["usage"]["cache_write"] == 0  # stopped
    assert "auto-caching stopped" in (stack.gw.gateway.caching.stopped(_ctx()) or "")
    found = build(f"sqlite:///{stack.db}").conversations
    assert [(c.cause, c.data["block"], c.data["offset"]) for c in found] == [("prefix_changes", "system[0]", 0)]


def _ctx() -> Any:
    from tokenfuse.limits.context import RequestContext

    return RequestContext("alice-droid", "alice", "droid", None, SONNET, "anthropic")


def test_fingerprints_of_remembered_turns_are_the_ones_computed_from_scratch(
    sim: SimulatorThread, clock: Clock, tmp_path: Path
) -> None:
    """Through a real gateway with a budget (so the conversation-prefix key runs too): two sessions
    interleave, the marker moves each turn, an early turn is edited, the history is truncated,
    then compacted. Every ledger row's fingerprint is the one computed from that body alone."""
    from tests.caching.test_doctor import reference_turn_print

    extra = "budgets: [{name: bob-day, match: {principal: bob}, window: day, limit: {usd: 1000}}]"
    config = make_config(sim.url, tmp_path / "ledger.db", extra)
    tools = [{"name": "run_tests", "description": "Run the test suite.", "input_schema": {"type": "object"}}]
    sent: list[dict[str, Any]] = []
    with GatewayThread(config) as gw:
        gw.gateway.caching.clock = clock
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        client = anthropic.Anthropic(base_url=st.url, api_key=BOB, max_retries=0)

        def step(history: list[dict[str, Any]], session: str, note: str) -> None:
            last = history[-1]
            marked = [*history[:-1], {**last, "content": [
                {"type": "text", "text": last["content"][0]["text"], "cache_control": {"type": "ephemeral"}}]}]
            body = {"model": SONNET, "max_tokens": 64, "system": SYSTEM, "tools": tools, "messages": marked}
            reply = client.messages.create(**body, extra_headers={"x-tokenfuse-session": session})  # type: ignore[call-overload]
            sent.append(body)
            history.append({"role": "assistant", "content": [{"type": "text", "text": reply.content[0].text}]})
            history.append({"role": "user", "content": [{"type": "text", "text": f"{note}: {TOOL_OUTPUT}"}]})
            clock.now += 20

        a = [{"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]}]
        b = [{"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]}]
        for turn in range(6):
            step(a, "a", f"a{turn}")
            step(b, "b", f"b{turn}")
        a[2] = {"role": "user", "content": [{"type": "text", "text": "an earlier turn, edited"}]}
        step(a, "a", "edited")
        del a[:4]
        step(a, "a", "truncated")
        a[:] = [{"role": "user", "content": [{"type": "text", "text": f"summary so far: {TOOL_OUTPUT}"}]}]
        step(a, "a", "compacted")
        step(b, "b", "b again")
        rows = [r for r in st.rows() if r["key_name"] == "bob-batch"]
        # Each request keyed and its exact input recorded; a's and b's first requests are one prefix.
        assert len(gw.gateway.limiter.prefixes) == len(sent) - 1
    assert len(rows) == len(sent)
    for row, body in zip(rows, sent, strict=True):
        assert row["prefix_fp"] == reference_turn_print(json.loads(json.dumps(body))).encode()
