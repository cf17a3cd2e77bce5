"""Breakpoint placement on real bodies parsed by the real protocol modules."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tokenfuse.caching.inject import inject, min_cacheable_tokens
from tokenfuse.limits.bounds import compute_bound
from tokenfuse.pricing import Price
from tokenfuse.protocols import anthropic, bedrock

SONNET = Price("claude-sonnet-4-5", Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6))
LONG = "stable instructions " * 400  # 8,000 bytes: ~1,600 tokens by the cautious estimate


def _agent(turns: int, model: str = "claude-sonnet-4-5", system: Any = LONG) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "start"}]
    for t in range(turns):
        messages += [{"role": "assistant", "content": f"step {t}"}, {"role": "user", "content": "x" * 6000}]
    return {"model": model, "max_tokens": 64, "system": system, "messages": messages}


def _marks(body: dict[str, Any]) -> list[str]:
    found = []

    def walk(v: Any, path: str) -> None:
        if isinstance(v, dict):
            if "cache_control" in v or "cachePoint" in v:
                found.append(path)
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(body, "")
    return found


def test_anthropic_marks_head_previous_turn_and_last_and_the_bound_prices_writes() -> None:
    info = anthropic.parse_request("messages", json.dumps(_agent(2)).encode())
    before = compute_bound(info, SONNET)
    done = inject(info, "5m")
    assert done.markers == 3 and done.skipped is None
    forwarded = json.loads(anthropic.encode_body(info))
    assert _marks(forwarded) == [".system[0]", ".messages[2].content[0]", ".messages[4].content[0]"]
    assert info.cache_writes_possible and not info.cache_1h
    after = compute_bound(info, SONNET)
    assert after.usd > before.usd  # writes cost 1.25x input: the bound covers them
    assert anthropic.parse_request("messages", anthropic.encode_body(info)).prompt_bytes <= info.prompt_bytes


def test_one_hour_ttl_sets_cache_1h() -> None:
    info = anthropic.parse_request("messages", json.dumps(_agent(1)).encode())
    inject(info, "1h")
    assert info.cache_1h and '"ttl":"1h"' in anthropic.encode_body(info).decode()


def test_caller_markers_win_and_short_prefixes_and_uncached_models_are_left_alone() -> None:
    body = _agent(1)
    body["system"] = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    raw = json.dumps(body).encode()
    info = anthropic.parse_request("messages", raw)
    assert inject(info).skipped == "the caller placed its own cache markers"
    assert json.loads(anthropic.encode_body(info)) == body
    short = anthropic.parse_request("messages", json.dumps({**_agent(0), "system": "hi"}).encode())
    assert "below the model's minimum" in (inject(short).skipped or "")
    assert not short.cache_writes_possible
    other = anthropic.parse_request("messages", json.dumps(_agent(1, model="llama-3")).encode())
    assert "no prompt caching" in (inject(other).skipped or "")


def test_minimums() -> None:
    assert min_cacheable_tokens("claude-sonnet-4-5") == 1024
    assert min_cacheable_tokens("us.anthropic.claude-haiku-4-5-20251001-v1:0") == 4096
    assert min_cacheable_tokens("claude-3-5-haiku-latest") == 2048
    assert min_cacheable_tokens("amazon.nova-pro-v1:0") == 1024
    assert min_cacheable_tokens("gpt-4o") is None


def test_converse_grid_has_segments_above_the_minimum_and_is_stable_across_turns() -> None:
    def converse(turns: int) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"text": "start"}]}]
        for t in range(turns):
            messages += [
                {"role": "assistant", "content": [{"text": f"step {t}"}]},
                {"role": "user", "content": [{"text": "y" * 2000}]},
            ]
        return {"system": [{"text": LONG}], "messages": messages}

    placed = []
    for turns in (6, 7):
        info = bedrock.parse_request("converse", json.dumps(converse(turns)).encode(), "anthropic.claude-sonnet-4-5")
        assert inject(info).markers >= 2
        placed.append(_marks(json.loads(bedrock.encode_body(info))))
    # The next turn keeps the previous turn's last checkpoints where they were.
    assert set(placed[0][-2:]) <= set(placed[1])
