"""The doctor names the right cause per failure kind, and nothing for a working cache."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversations import messages, parse, requests, steps
from tokenfuse.caching.doctor import (
    HEAD_BLOCKS,
    KEEP_TEXT_BYTES,
    TurnPrint,
    _block_bytes,
    _ttl_of,
    diagnose,
    turn_print,
    turn_print_of,
)
from tokenfuse.caching.inject import text_bytes
from tokenfuse.history import History

SYS = "You are an agent. " * 500  # 9,000 bytes


def body(system: Any = SYS, turns: int = 1, marker: bool = True, ttl: str | None = None) -> dict[str, Any]:
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    sys_block: dict[str, Any] = {"type": "text", "text": system}
    if marker:
        sys_block["cache_control"] = control
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for t in range(turns):
        messages += [{"role": "assistant", "content": f"a{t}"}, {"role": "user", "content": f"r{t}"}]
    return {"system": [sys_block], "messages": messages}


def causes(prev: dict[str, Any], cur: dict[str, Any], read: int = 0, gap: float = 10, minimum: int | None = 1024,
           priced: bool = True) -> str | None:
    p, c = turn_print(prev), turn_print(cur)
    assert c.continues(p) or prev["system"] != cur["system"]
    found = diagnose(p, c, read, gap, minimum, priced)
    return None if found is None else found.kind


def test_each_cause() -> None:
    assert causes(body(), body(turns=2), read=2000) is None  # working
    assert causes(body(marker=False), body(marker=False, turns=2)) == "no_marker"
    assert causes(body(system="short"), body(system="short", turns=2)) == "below_minimum"
    assert causes(body(system="12:00 " + SYS), body(system="12:01 " + SYS, turns=2)) == "prefix_changes"
    assert causes(body(), body(turns=2), gap=400) == "expired"
    assert causes(body(ttl="1h"), body(ttl="1h", turns=2), gap=400) is None  # 1h entry still alive
    assert causes(body(), body(turns=2), minimum=None) == "no_caching_model"


def test_reordered_tools_are_located() -> None:
    tools = [{"name": n, "description": "d" * 3000, "input_schema": {}} for n in ("a", "b")]
    prev = {**body(), "tools": tools}
    cur = {**body(turns=2), "tools": tools[::-1]}
    found = diagnose(turn_print(prev), turn_print(cur), 0, 10, 1024)
    assert found is not None and found.kind == "prefix_changes" and found.data["block"] == "tools[0]"


def test_the_ledger_form_keeps_hashes_not_text_and_diagnoses_the_same() -> None:
    prev, cur = turn_print(body(system="12:00 " + SYS)), turn_print(body(system="12:01 " + SYS, turns=2))
    stored = prev.encode()
    assert "agent" not in stored and len(stored) < 400
    again = TurnPrint.decode(stored)
    assert again is not None
    found = diagnose(again, TurnPrint.decode(cur.encode()) or cur, 0, 10, 1024)
    assert found is not None and found.kind == "prefix_changes" and found.data["offset"] == 0


# --- computed per segment, remembered per turn: the same fingerprint as before --------------------


def reference_turn_print(body: dict[str, Any], *, keep_text: bool = False) -> TurnPrint:
    """``turn_print`` as it was before it was computed per segment (commit 5c5058c), verbatim."""
    items: list[tuple[Any, str | None]] = []  # (block, ttl of a marker right after it)

    def add(block: Any) -> None:
        if isinstance(block, dict) and "cachePoint" in block:
            if items:
                items[-1] = (items[-1][0], _ttl_of(block["cachePoint"]))
            return
        marker = block.get("cache_control") if isinstance(block, dict) else None
        items.append((block, _ttl_of(marker) if isinstance(marker, dict) else None))

    tools = body.get("tools")
    config = body.get("toolConfig")
    if not isinstance(tools, list) and isinstance(config, dict):
        tools = config.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        add(tool)
    n_tools = len(items)
    system = body.get("system")
    for part in [system] if isinstance(system, str) else system if isinstance(system, list) else []:
        add(part)
    n_system = len(items) - n_tools
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    bounds: list[int] = []  # index of each message's first block
    for message in messages:
        bounds.append(len(items))
        content = message.get("content") if isinstance(message, dict) else None
        for part in [content] if isinstance(content, str) else content if isinstance(content, list) else []:
            add(part)
    hasher = hashlib.blake2b(digest_size=4)
    blocks: dict[int, tuple[int, int]] = {}
    texts: list[bytes] = []
    own: list[int] = []  # hash of each block alone
    kept = 0
    offset = 0
    for i, (block, _) in enumerate(items):
        raw = _block_bytes(block)
        hasher.update(len(raw).to_bytes(4, "little"))
        hasher.update(raw)
        offset += text_bytes(block)
        blocks[i] = (offset, int.from_bytes(hasher.copy().digest(), "little"))
        own.append(hash(raw))
        if keep_text and i < HEAD_BLOCKS and kept < KEEP_TEXT_BYTES:
            text = block.get("text") if isinstance(block, dict) else None
            shown = text.encode() if isinstance(text, str) else raw
            texts.append(shown[: KEEP_TEXT_BYTES - kept])
            kept += len(texts[-1])
    markers = [(i, ttl) for i, (_, ttl) in enumerate(items) if ttl is not None]
    ends = [*bounds[1:], len(items)] if bounds else []
    message_hashes = [hash(tuple(own[a:b])) for a, b in zip(bounds, ends, strict=True)]
    return TurnPrint(n_tools, n_system, blocks, len(items), markers, len(messages), texts, message_hashes)


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(["anthropic", "anthropic-injected", "converse"]),
    st.lists(messages, max_size=6),
    st.lists(steps, min_size=1, max_size=14),
    st.sampled_from([64 * 1024 * 1024, 6000]),
)
def test_remembered_turns_give_the_fingerprint_computed_from_scratch(
    shape: str, start: list[Any], plan: list[tuple[Any, ...]], max_bytes: int
) -> None:
    """Appended, re-marked, edited, truncated, compacted, interleaved, evicted: every request's
    fingerprint is the one the original code computes from its body alone."""
    history = History(max_bytes=max_bytes, max_path_bytes=4000, min_bytes=0)
    for info in requests(shape, start, plan):
        want = reference_turn_print(info.body, keep_text=True)
        assert turn_print(info.body, keep_text=True) == want
        assert turn_print(info.body) == reference_turn_print(info.body)
        assert turn_print_of(info, history) == want
        assert turn_print_of(info, history) == want  # again, now from what the first call kept
        assert history.bytes <= max_bytes


def test_a_long_loop_hashes_only_its_new_turns() -> None:
    """The 200th turn of a loop reuses the 199 before it: its fingerprint still equals the original's."""
    history = History()
    msgs: list[Any] = []
    for t in range(200):
        msgs.append({"role": "user" if t % 2 == 0 else "assistant", "content": [{"type": "text", "text": f"turn {t} " * 40}]})
        marked = [*msgs[:-1], {**msgs[-1], "content": [{**msgs[-1]["content"][0], "cache_control": {"type": "ephemeral"}}]}]
        info = parse("anthropic", {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": SYS, "messages": marked})
        before = len(history)
        assert turn_print_of(info, history) == reference_turn_print(info.body, keep_text=True)
        # Once remembered (past history.min_bytes): the new turn, and the previous one without its marker.
        assert before == 0 or len(history) - before <= 2
    assert len(history) <= 202


def test_a_body_changed_without_its_encoding_is_fingerprinted_from_the_body() -> None:
    history = History(min_bytes=0)
    info = parse("anthropic", {**body(turns=3), "model": "claude-sonnet-4-5", "max_tokens": 64})
    turn_print_of(info, history)
    info.body["messages"].append({"role": "assistant", "content": "changed behind the encoding's back"})
    assert turn_print_of(info, history) == reference_turn_print(info.body, keep_text=True)


def test_a_cache_point_opening_a_message_marks_the_block_before_it() -> None:
    """Bedrock: a message whose content starts with a cachePoint marks the last block of the one
    before, or the system prompt; in short prompts and long ones (assembled two ways)."""
    history = History(min_bytes=0)
    point = {"cachePoint": {"type": "default", "ttl": "1h"}}
    for n in (1, 3, 12):
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": f"m{i} " * 30}]} for i in range(n)]
        msgs.append({"role": "user", "content": [point, {"text": "next"}]})
        msgs.append({"role": "assistant", "content": [point]})
        for tools in (False, True):
            body: dict[str, Any] = {"system": [{"text": "s"}], "messages": msgs}
            if tools:
                body["toolConfig"] = {"tools": [{"toolSpec": {"name": "t"}}]}
            info = parse("converse", body)
            want = reference_turn_print(info.body, keep_text=True)
            assert [t for _, t in want.markers] == ["1h", "1h"]  # the two cache points, on earlier blocks
            assert turn_print_of(info, history) == want
            assert turn_print_of(info, history) == want
    first = {"system": [{"text": "s"}], "messages": [{"role": "user", "content": [point, {"text": "x"}]}]}
    info = parse("converse", first)
    assert turn_print_of(info, history) == reference_turn_print(info.body, keep_text=True)
    assert reference_turn_print(info.body).markers == [(0, "1h")]  # the system block, the only one before
