"""Remembered conversations: found without encoding, computed once per turn, bounded in memory."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from typing import Any

from tests.conversations import SYSTEM, parse
from tokenfuse.caching.doctor import turn_print_of
from tokenfuse.history import MAX_BYTES, History, Turns
from tokenfuse.limits.prefix import conversation
from tokenfuse.protocols.base import RequestInfo

OUTPUT = "ok  tests/test_module.py::test_case PASSED [ 42%]\n" * 20  # ~1 kB


def turn(i: int, tag: str = "") -> dict[str, Any]:
    role = "user" if i % 2 == 0 else "assistant"
    return {"role": role, "content": [{"type": "text", "text": f"{tag}step {i}\n{OUTPUT}"}]}


def request(turns: list[dict[str, Any]], system: str = SYSTEM) -> RequestInfo:
    """An agent's request: the newest turn carries the cache marker, as Claude Code sends it."""
    last = turns[-1]
    marked = {**last, "content": [{**last["content"][0], "cache_control": {"type": "ephemeral"}}]}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": system, "messages": [*turns[:-1], marked]}
    return parse("anthropic", body)


def walk(history: History, info: RequestInfo) -> Turns:
    return history.walk(info, "messages", info.body["messages"])


def digests(history: History, info: RequestInfo) -> list[bytes]:
    seen = walk(history, info)
    return [seen.root.digest, *(n.digest for n in seen.nodes)]


def scratch(info: RequestInfo) -> list[bytes]:
    """The same digests with nothing remembered."""
    return digests(History(min_bytes=1 << 60), info)


def test_a_continuing_request_finds_the_turns_it_shares_and_adds_the_new_ones() -> None:
    history = History()
    loop = [turn(i) for i in range(20)]
    first = walk(history, request(loop))
    assert len(history) == 21 and all(n.stored for n in first.nodes)
    info = request([*loop, turn(20), turn(21)])
    second = walk(history, info)
    assert second.root is first.root and second.nodes[:19] == first.nodes[:19]
    # Turn 19 lost its marker: that node replaces the marked one; 20 and 21 are new.
    assert len(history) == 23 and not first.nodes[19].stored
    assert digests(history, info) == scratch(info)


def test_edited_truncated_and_compacted_histories_leave_the_path_where_they_change() -> None:
    history = History()
    loop = [turn(i) for i in range(12)]
    walk(history, request(loop))
    edited = [*loop[:5], turn(5, "edited "), *loop[6:]]
    for turns in (edited, loop[4:], [turn(0, "summary of the work so far: ")], loop, loop[:7]):
        info = request(turns)
        assert digests(history, info) == scratch(info)
    assert walk(history, request(edited)).nodes[4].stored


def test_interleaved_conversations_each_continue_their_own_path() -> None:
    history = History()
    a = [turn(0)] + [turn(i, "a ") for i in range(1, 10)]
    b = [turn(0)] + [turn(i, "b ") for i in range(1, 10)]  # the same task, then their own way
    for n in range(10, 20):
        for turns in (a, b):
            turns.append(turn(n, "a " if turns is a else "b "))
            before = len(history)
            info = request(turns)
            assert digests(history, info) == scratch(info)
            if n > 10:
                assert len(history) - before == 1  # the new turn (its predecessor's marker variant is replaced)
    ends = [walk(history, request(t)).nodes for t in (a, b)]
    assert ends[0][0] is ends[1][0] and ends[0][1] is not ends[1][1]


def test_memory_stays_within_its_bound_and_the_least_recent_conversation_goes_first() -> None:
    history = History(max_bytes=120_000)
    loops = {tag: [turn(i, tag) for i in range(20)] for tag in "abcdefgh"}
    kept: dict[str, Any] = {}
    for tag, turns in loops.items():
        info = request(turns)
        kept[tag] = walk(history, info)
        assert history.bytes <= history.max_bytes
        assert digests(history, info) == scratch(info)
    assert not any(n.stored for n in kept["a"].nodes)  # the oldest went first
    assert all(n.stored for n in kept["h"].nodes)
    history.clear()
    assert len(history) == 0 and history.bytes == 0


def test_eviction_keeps_the_turns_a_newer_conversation_still_shares() -> None:
    history = History(max_bytes=60_000)
    shared = [turn(i) for i in range(10)]
    old = walk(history, request([*shared, turn(10, "old ")]))
    new = walk(history, request([*shared, turn(10, "new ")]))
    for i in range(50):  # other short conversations, until the old branch has to go
        walk(history, request([turn(0, f"other{i} "), turn(1)]))
        if not old.nodes[-1].stored:
            break
    assert not old.nodes[-1].stored and all(n.stored for n in new.nodes)


def test_a_conversation_past_its_share_is_computed_but_not_kept() -> None:
    history = History(max_path_bytes=20_000)
    loop = [turn(i) for i in range(40)]  # ~40 kB
    info = request(loop)
    seen = walk(history, info)
    stored = [n.stored for n in seen.nodes]
    assert stored[0] and not stored[-1] and stored == sorted(stored, reverse=True)
    assert history.bytes <= 20_000
    assert digests(history, info) == scratch(info)


def test_a_body_changed_without_its_encoding_is_computed_from_the_body() -> None:
    history = History()
    loop = [turn(i) for i in range(8)]
    info = request(loop)
    walk(history, info)
    info.body["messages"].append(turn(8))  # no body_changed(): the canonical member is stale
    seen = walk(history, info)
    assert len(seen.nodes) == 9 and not any(n.stored for n in seen.nodes)
    assert digests(history, info) == digests(History(min_bytes=1 << 60), info)


def test_the_estimate_is_what_the_memory_holds() -> None:
    """history.bytes against tracemalloc, for the prefix key and the doctor's segments together."""
    loop = [turn(i) for i in range(120)]
    infos = [request(loop[:100]), request(loop)]
    history = History()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for info in infos:
            conversation(info, "alice", history)
            turn_print_of(info, history)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert 0.8 <= history.bytes / held <= 1.25, (history.bytes, held)


def test_threads_walking_one_history_each_get_their_own_conversation() -> None:
    history = History(max_bytes=200_000)
    failures: list[str] = []

    def agent(tag: str) -> None:
        turns = [turn(0)]
        for i in range(1, 25):
            turns.append(turn(i, tag))
            info = request(turns)
            if digests(history, info) != scratch(info):
                failures.append(f"{tag} {i}")

    threads = [threading.Thread(target=agent, args=(f"t{k} ",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and history.bytes <= history.max_bytes


def test_the_default_bound() -> None:
    assert MAX_BYTES == 64 * 1024 * 1024
