"""The doctor names the right cause per failure kind, and nothing for a working cache."""

from __future__ import annotations

from typing import Any

from tokenfuse.caching.doctor import TurnPrint, diagnose, turn_print

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
