"""The guard container: dedupe, disabling, isolation of guard bugs, prompt fingerprints, alert delivery."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.guards.agent import CLAUDE, Agent, ctx, request, uncached
from tokenfuse.config import AlertsConfig, GuardsConfig
from tokenfuse.guards import Finding, Guards, Prompt
from tokenfuse.guards.base import Tracks
from tokenfuse.limits.alerts import AlertManager
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.protocols import openai
from tokenfuse.usage import Usage

ONLY_LOOP = {"cache_miss": {"enabled": False}, "context_growth": {"enabled": False}, "cache_doctor": {"enabled": False}}
HOUR = 3600.0


def guards(cfg: Mapping[str, object], found: list[Finding]) -> Guards:
    return Guards(GuardsConfig.model_validate(cfg), found.append)


def repeat(g: Guards, times: int, start: float, session: str = "s1") -> None:
    info, raw = request(Agent().body())
    for i in range(times):
        g.observe(
            ctx(session=session), info, raw, Usage(input_uncached=10), Decimal("0.01"), CLAUDE, start + i
        )


def test_one_finding_per_guard_and_subject_per_hour() -> None:
    found: list[Finding] = []
    g = guards(ONLY_LOOP, found)
    repeat(g, 6, 10 * HOUR)
    assert len(found) == 1
    repeat(g, 3, 10 * HOUR + 100, session="s2")
    assert [f.subject for f in found] == ["session s1", "session s2"]
    repeat(g, 3, 11 * HOUR + 5)  # the next hour: reported again
    assert len(found) == 3
    assert [p["subject"] for p in g.recent()] == ["session s1", "session s2", "session s1"]
    assert g.recent()[0]["text"].startswith("tokenfuse loop guard: possible loop in session s1")


def test_disabled_guards_do_nothing() -> None:
    found: list[Finding] = []
    for cfg in ({"enabled": False}, {**ONLY_LOOP, "loop": {"enabled": False}}):
        g = guards(cfg, found)
        assert not g.enabled
        repeat(g, 5, 0)
    assert found == []


def test_refusal_goes_through_check_and_is_reported() -> None:
    found: list[Finding] = []
    g = guards({**ONLY_LOOP, "loop": {"action": "refuse", "repeats": 2}}, found)
    info, raw = request(Agent().body())
    assert g.check(ctx(), info, raw, 0) is None
    g.observe(ctx(), info, raw, Usage(input_uncached=10), Decimal("0.01"), CLAUDE, 1)
    message = g.check(ctx(), info, raw, 2)
    assert message is not None and "refused" in message
    assert [f.severity for f in found] == ["critical"]


def test_estimated_usage_and_non_chat_routes_are_skipped() -> None:
    found: list[Finding] = []
    g = guards(ONLY_LOOP, found)
    info, raw = request(Agent().body())
    for t in range(4):
        g.observe(ctx(), info, raw, Usage(input_uncached=10, estimated=True), Decimal(0), CLAUDE, t)
    raw_emb = json.dumps({"model": "text-embedding-3-small", "input": "hello"}).encode()
    emb = openai.parse_request("embeddings", raw_emb)
    for t in range(4):
        g.observe(ctx(), emb, raw_emb, Usage(input_uncached=10), Decimal(0), CLAUDE, t)
    assert found == []


class Broken:
    name = "broken"
    refuses = False

    def observe(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        usage: Usage,
        cost: Decimal,
        price: Price | None,
        now: float,
    ) -> Finding | None:
        raise RuntimeError("bug")

    def check(self, ctx: RequestContext, prompt: Prompt, now: float) -> Finding | None:
        return None


def test_a_broken_guard_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    g = Guards(GuardsConfig.model_validate({}), guards=[Broken()])
    info, raw = request(Agent().body())
    with caplog.at_level(logging.ERROR, "tokenfuse.guards"):
        assert g.observe(ctx(), info, raw, uncached(10), Decimal(0), CLAUDE, 0) == []
    assert "guard broken failed" in caplog.text


def test_fingerprints_ignore_cache_markers_and_follow_the_conversation() -> None:
    agent = Agent(markers=True)
    first = Prompt(agent.body(), b"")
    agent.step("answer")
    second = Prompt(agent.body(), b"")
    # The first message carried the marker last turn and not this turn.
    assert "cache_control" in json.dumps(first.items[0]) and "cache_control" not in json.dumps(
        second.items[0]
    )
    assert first.head == second.head and first.item(0) == second.item(0)
    assert second.item(2) != first.item(0)
    assert (
        Prompt({"messages": [], "system": "x"}, b"").head != Prompt({"messages": [], "system": "y"}, b"").head
    )
    converse = {
        "system": [{"text": "s"}, {"cachePoint": {"type": "default"}}],
        "messages": [{"role": "user", "content": [{"text": "hi"}, {"cachePoint": {"type": "default"}}]}],
    }
    bare = {"system": [{"text": "s"}], "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert Prompt(converse, b"1").head == Prompt(bare, b"2").head
    responses = Prompt({"instructions": "be brief", "input": "hello"}, b"")
    assert responses.items == ["hello"]


def test_tracks_forget_the_least_recently_used() -> None:
    t: Tracks[str, int] = Tracks(2)
    t.put("a", 1)
    t.put("b", 2)
    assert t.get("a") == 1
    t.put("c", 3)
    assert len(t) == 2 and t.get("b") is None and t.get("a") == 1


def test_findings_reach_the_alert_sender_once_per_subject_and_hour(tmp_path: Path) -> None:
    async def main() -> list[dict[str, object]]:
        m = AlertManager(AlertsConfig(), f"sqlite:///{tmp_path / 'a.db'}")
        await m.start()
        f = Finding("loop", "warning", "session s1", "possible loop", {"spent_usd": "0.75"})
        for now in (HOUR, HOUR + 10, 2 * HOUR):
            m.notify(f"guard:{f.guard}:{f.subject}", f.guard, f.payload(now), event="guard_finding", now=now)
        await m.stop()
        return m.sent

    sent = asyncio.run(main())
    assert [s["ts"] for s in sent] == ["1970-01-01T01:00:00+00:00", "1970-01-01T02:00:00+00:00"]
    assert sent[0]["text"] == "tokenfuse loop guard: possible loop" and sent[0]["spent_usd"] == "0.75"


def test_openai_conversations_sharing_a_system_prompt_have_different_heads() -> None:
    def chat(task: str) -> Prompt:
        body = {
            "messages": [{"role": "system", "content": "you are an agent"}, {"role": "user", "content": task}]
        }
        return Prompt(body, b"")

    assert chat("task A").head != chat("task B").head
    assert chat("task A").head == chat("task A").head


# --- fingerprints: frozen and stripped in one pass, the same values as before ---------------------


def _reference_frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((k, _reference_frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_reference_frozen(v) for v in value)
    return value


def _reference_bare_block(value: Any) -> Any:
    if isinstance(value, dict) and "cache_control" in value:
        return {k: v for k, v in value.items() if k != "cache_control"}
    return value


def _reference_bare(value: Any) -> Any:
    if isinstance(value, list):
        return [_reference_bare_block(v) for v in value if not (isinstance(v, dict) and "cachePoint" in v)]
    if isinstance(value, dict):
        value = _reference_bare_block(value)
        content = value.get("content")
        if isinstance(content, list):
            value = {**value, "content": [
                _reference_bare_block(b) for b in content if not (isinstance(b, dict) and "cachePoint" in b)
            ]}
    return value


def _reference_head(body: dict[str, Any], items: list[Any]) -> int:
    """``Prompt.head`` as it was before it froze and stripped in one pass (commit 5c5058c)."""
    parts = [_reference_bare(body.get(k)) for k in ("system", "instructions", "tools", "toolConfig")]
    for item in items[:4]:
        parts.append(_reference_bare(item))
        if not (isinstance(item, dict) and item.get("role") in ("system", "developer")):
            break
    return hash(_reference_frozen(parts))


_KEYS = st.sampled_from(["role", "content", "text", "type", "cache_control", "cachePoint", "input", "a"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.sampled_from(["", "x", "user", "system"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_ITEM = _JSON | st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user"]), "content": _JSON}
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["system", "instructions", "tools", "toolConfig", "x"]), _JSON, max_size=4),
       st.lists(_ITEM, min_size=1, max_size=6))
def test_fingerprints_are_the_values_they_were(head: dict[str, Any], items: list[Any]) -> None:
    p = Prompt({**head, "messages": items}, b"")
    assert p.head == _reference_head(head, items)
    assert [p.item(i) for i in range(len(items))] == [hash(_reference_frozen(_reference_bare(i))) for i in items]
