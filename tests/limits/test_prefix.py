"""Conversation-prefix bounds: exact where a prefix was recorded, bytes for the rest, never below the truth."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfuse.limits.prefix import OVERHEAD_PER_TURN, PrefixBounds, conversation
from tokenfuse.protocols import anthropic, openai
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.simulator.prompts import anthropic_blocks
from tokenfuse.simulator.tokens import prompt_tokens
from tokenfuse.usage import Usage

SYSTEM = "You are a coding agent. " * 100


def turn(role: str, text: str, marker: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if marker:
        block["cache_control"] = {"type": "ephemeral"}
    return {"role": role, "content": [block]}


def body(texts: list[str], system: str = SYSTEM, max_tokens: int = 64000) -> dict[str, Any]:
    """An agent turn: the cache marker on the newest turn only, as Claude Code sends it."""
    msgs = [turn("user" if i % 2 == 0 else "assistant", t, i == len(texts) - 1) for i, t in enumerate(texts)]
    return {
        "model": "claude-opus-4-6",
        "max_tokens": max_tokens,
        "stream": True,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": msgs,
    }


def info_of(b: dict[str, Any]) -> RequestInfo:
    return anthropic.parse_request("messages", json.dumps(b).encode(), None)


def simulated_input(b: dict[str, Any]) -> int:
    """What the simulator bills as input for this body (all classes)."""
    return prompt_tokens(sum(len(x.text) for x in anthropic_blocks(b)))


def test_moving_the_cache_marker_keeps_the_prefix_key() -> None:
    first = conversation(info_of(body(["a", "b", "c"])), "alice")
    second = conversation(info_of(body(["a", "b", "c", "d", "e"])), "alice")
    assert first is not None and second is not None
    assert second.chain[3] == first.key
    # Output limits and streaming are not input.
    third = conversation(info_of({**body(["a", "b", "c", "d", "e"], max_tokens=5), "stream": False}), "alice")
    assert third is not None and third.key == second.key


def test_a_changed_system_prompt_earlier_turn_or_principal_misses() -> None:
    base = conversation(info_of(body(["a", "b", "c"])), "alice")
    assert base is not None
    for other, scope in (
        (body(["a", "b", "c", "d"], system="other"), "alice"),
        (body(["a", "B", "c", "d"]), "alice"),
        (body(["a", "b", "c", "d"]), "bob"),
    ):
        conv = conversation(info_of(other), scope)
        assert conv is not None and base.key not in conv.chain


def test_the_shared_prefix_counts_its_exact_tokens_and_new_turns_their_bytes() -> None:
    prefixes = PrefixBounds()
    p = body(["x" * 4000, "y" * 3000, "z" * 3000])
    conv_p = conversation(info_of(p), "alice")
    assert conv_p is not None
    prefixes.record(conv_p.key, Usage(cache_read=2000, cache_write=500))
    r = info_of(body(["x" * 4000, "y" * 3000, "z" * 3000, "w" * 3000, "v" * 3000]))
    conv_r = conversation(r, "alice")
    assert conv_r is not None
    got = prefixes.input_bound(conv_r)
    assert got == 2500 + conv_r.sizes[3] + conv_r.sizes[4] + 2 * OVERHEAD_PER_TURN
    assert got < r.prompt_bytes


def test_estimated_usage_is_not_recorded_and_old_entries_are_evicted() -> None:
    prefixes = PrefixBounds(max_entries=2)
    prefixes.record(b"a", Usage(input_uncached=10, estimated=True))
    assert len(prefixes) == 0
    for k in (b"a", b"b", b"c"):
        prefixes.record(k, Usage(input_uncached=10))
    assert len(prefixes) == 2


def test_openai_chat_conversations_are_keyed_too() -> None:
    def chat(n: int) -> RequestInfo:
        msgs = [{"role": "system", "content": SYSTEM}] + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(n)
        ]
        raw = json.dumps({"model": "gpt-4.1", "messages": msgs}).encode()
        return openai.parse_request("chat.completions", raw, None)

    a, b = conversation(chat(3), "alice"), conversation(chat(5), "alice")
    assert a is not None and b is not None and b.chain[4] == a.key


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(min_size=0, max_size=400), min_size=1, max_size=6),
    st.lists(st.text(min_size=0, max_size=400), min_size=0, max_size=4),
)
def test_the_bound_is_never_below_what_the_simulator_bills(old: list[str], new: list[str]) -> None:
    """A loop step: record the previous turn's exact input, bound the next one."""
    prefixes = PrefixBounds()
    p = body(old)
    conv_p = conversation(info_of(p), "alice")
    assert conv_p is not None
    prefixes.record(conv_p.key, Usage(input_uncached=simulated_input(p)))
    r = body(old + new)
    conv_r = conversation(info_of(r), "alice")
    assert conv_r is not None
    got = prefixes.input_bound(conv_r)
    assert got is not None and got >= simulated_input(r)
