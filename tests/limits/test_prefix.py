"""Conversation-prefix bounds: exact where a prefix was recorded, bytes for the rest, never below the truth."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversations import messages, requests, steps
from tokenfuse.history import FREE_KEYS, History
from tokenfuse.limits.prefix import OVERHEAD_PER_TURN, PrefixBounds, conversation
from tokenfuse.protocols import anthropic, openai
from tokenfuse.protocols.base import RequestInfo, dumps
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


# --- remembered per turn: the same pairing of requests as before --------------------------------


def _reference_strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reference_strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_reference_strip(v) for v in value if not (isinstance(v, dict) and len(v) == 1 and "cachePoint" in v)]
    return value


def _reference_encode(value: Any) -> bytes:
    raw = dumps(value)
    if b'"cache' in raw:
        raw = dumps(_reference_strip(value))
    return raw


def reference_chain(info: RequestInfo, scope: str) -> tuple[list[bytes], list[int]]:
    """``conversation``'s chain and sizes as they were computed before turns were remembered (5c5058c)."""
    body = info.body
    name = "messages" if isinstance(body.get("messages"), list) else "input"
    turns = body[name]
    head = {k: v for k, v in body.items() if k != name and k not in FREE_KEYS}
    h = hashlib.sha256()
    for part in (scope, info.protocol, info.route, info.model, name):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    raw = _reference_encode(head)
    h.update(len(raw).to_bytes(8, "little"))
    h.update(raw)
    chain, sizes = [h.digest()], []
    for turn in turns:
        raw = _reference_encode(turn)
        sizes.append(len(raw))
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
        chain.append(h.digest())
    return chain, sizes


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(["anthropic", "anthropic-injected", "converse", "chat"]),
    st.lists(messages, max_size=6),
    st.lists(steps, min_size=1, max_size=14),
    st.sampled_from([64 * 1024 * 1024, 6000]),
)
def test_remembered_turns_pair_requests_exactly_as_keys_computed_from_scratch(
    shape: str, start: list[Any], plan: list[tuple[Any, ...]], max_bytes: int
) -> None:
    """Appended, re-marked, edited, truncated, compacted, interleaved, evicted, two principals: two
    prefixes share a key exactly when the original keys were equal, sizes are the same, and so is
    every bound a recorded prefix gives."""
    history = History(max_bytes=max_bytes, max_path_bytes=4000, min_bytes=0)
    ours, theirs = PrefixBounds(), PrefixBounds()
    to_theirs: dict[bytes, bytes] = {}
    to_ours: dict[bytes, bytes] = {}
    for n, info in enumerate(requests(shape, start, plan)):
        for scope in ("alice", "bob"):
            conv = conversation(info, scope, history)
            assert conv is not None
            chain, sizes = reference_chain(info, scope)
            assert conv.sizes == tuple(sizes) and len(conv.chain) == len(chain)
            for a, b in zip(conv.chain, chain, strict=True):
                assert to_theirs.setdefault(a, b) == b and to_ours.setdefault(b, a) == a
            # The bound from what earlier requests recorded is the same.
            got, want = ours.input_bound(conv), None
            for k in range(len(chain) - 1, -1, -1):
                exact = theirs._known.get(chain[k])
                if exact is not None:
                    want = exact + conv.suffix_bound(k)
                    break
            assert got == want
            usage = Usage(input_uncached=100 + n)
            ours.record(conv.key, usage)
            theirs.record(chain[-1], usage)


def test_a_request_continuing_a_remembered_conversation_keys_only_its_new_turns() -> None:
    history = History()
    texts = [f"turn {i}: " + "tool output " * 50 for i in range(40)]
    first = conversation(info_of(body(texts[:30])), "alice", history)
    assert first is not None
    remembered = len(history)
    second = conversation(info_of(body(texts)), "alice", history)
    assert second is not None and second.chain[30] == first.key
    assert second.nodes[:29] == first.nodes[:29]  # the same nodes: found, not hashed again
    # Turn 30 without its marker replaces the marked one, which no request will send again; 31-40 are new.
    assert len(history) == remembered + 10 and not first.nodes[29].stored
