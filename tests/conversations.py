"""Sequences of requests of agent conversations, for tests that pin what remembering earlier
turns (tokenfuse/history.py) must not change: each request's result equals the one computed
from scratch, whatever came before it.

A sequence starts from a few messages and applies steps: append turns, move the cache marker to
the newest turn, edit an earlier turn, truncate the oldest turns, compact the history into one
summary, change the system prompt or tools, or switch to a second conversation (interleaving).
Bodies are real JSON parsed by the real protocol modules, so each carries its canonical encoding
as the gateway's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tokenfuse.caching.inject import inject
from tokenfuse.protocols import anthropic, bedrock, openai
from tokenfuse.protocols.base import RequestInfo

SYSTEM = "You are a careful coding agent. Follow the repository's conventions. " * 8
TOOLS = [
    {"name": "run_tests", "description": "Run the tests.", "input_schema": {"type": "object"}},
    {"name": "read_file", "description": "Read a file.", "input_schema": {"type": "object", "properties": {}}},
]
MARK = {"type": "ephemeral"}
MARK_1H = {"type": "ephemeral", "ttl": "1h"}

texts = st.text(max_size=120) | st.sampled_from(["", "ok", "x" * 700, "naïve café ✓ \u2028", "\"cache_control\""])
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()


def _marked(block: dict[str, Any], ttl: int) -> dict[str, Any]:
    return {**block, "cache_control": MARK_1H if ttl == 2 else MARK} if ttl else block


blocks = st.one_of(
    st.builds(lambda t, m: _marked({"type": "text", "text": t}, m), texts, st.integers(0, 2)),
    # A marker nested inside a tool result's content: the prefix key drops it, the doctor's block bytes keep it.
    st.builds(
        lambda t, m: {"type": "tool_result", "tool_use_id": "toolu_1", "content": [_marked({"type": "text", "text": t}, m)]},
        texts, st.integers(0, 2),
    ),
    st.builds(lambda x: {"type": "tool_use", "id": "toolu_1", "name": "run_tests", "input": {"x": x, "y": [x]}}, numbers),
    st.builds(lambda ttl: {"cachePoint": {"type": "default", **({"ttl": "1h"} if ttl else {})}}, st.booleans()),
    texts,  # a bare string where a block belongs: every consumer must take it as the original did
)
messages = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["user", "assistant"]),
    texts | st.lists(blocks, max_size=4),
) | st.builds(
    # A cache point first: it marks the block before it, in an earlier message (or the system prompt).
    lambda ttl, rest: {"role": "user", "content": [{"cachePoint": {"type": "default", **({"ttl": "1h"} if ttl else {})}}, *rest]},
    st.booleans(), st.lists(blocks, max_size=2),
) | st.sampled_from([None, 7, "loose"])  # not a message at all

steps = st.one_of(
    st.tuples(st.just("append"), st.lists(messages, min_size=1, max_size=3)),
    st.tuples(st.just("remark"), st.integers(0, 2)),
    st.tuples(st.just("edit"), st.integers(0, 50), messages),
    st.tuples(st.just("truncate"), st.integers(1, 4)),
    st.tuples(st.just("compact"), messages),
    st.tuples(st.just("system"), texts),
    st.tuples(st.just("tools"), st.booleans()),
    st.tuples(st.just("switch"), st.just(None)),
    st.tuples(st.just("repeat"), st.just(None)),
)


@dataclass
class Loop:
    """Two conversations of one agent; ``apply`` changes the current one and returns its next body."""

    histories: list[list[Any]] = field(default_factory=lambda: [[], []])
    systems: list[str] = field(default_factory=lambda: [SYSTEM, SYSTEM + "Second."])
    tools: list[bool] = field(default_factory=lambda: [True, True])
    current: int = 0

    def apply(self, step: tuple[Any, ...]) -> None:
        kind, arg, *rest = step
        h = self.histories[self.current]
        if kind == "append":
            h.extend(arg)
        elif kind == "remark":
            # The agent moves its marker to the newest turn (Claude Code's way).
            for i, m in enumerate(h):
                if isinstance(m, dict) and isinstance(m.get("content"), list):
                    h[i] = {**m, "content": [
                        {k: v for k, v in b.items() if k != "cache_control"} if isinstance(b, dict) else b
                        for b in m["content"]
                    ]}
            if h and isinstance(h[-1], dict) and isinstance(h[-1].get("content"), list) and h[-1]["content"]:
                last = h[-1]["content"][-1]
                if isinstance(last, dict) and "cachePoint" not in last:
                    h[-1] = {**h[-1], "content": [*h[-1]["content"][:-1], _marked(last, arg or 1)]}
        elif kind == "edit" and h:
            h[arg % len(h)] = rest[0]
        elif kind == "truncate":
            del h[: min(arg, len(h))]
        elif kind == "compact":
            h[:] = [arg]
        elif kind == "system":
            self.systems[self.current] = SYSTEM + arg
        elif kind == "tools":
            self.tools[self.current] = arg
        elif kind == "switch":
            self.current = 1 - self.current

    def anthropic(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": self.systems[self.current], "cache_control": MARK}],
            "messages": list(self.histories[self.current]),
        }
        if self.tools[self.current]:
            body["tools"] = TOOLS
        return body

    def converse(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "system": [{"text": self.systems[self.current]}, {"cachePoint": {"type": "default"}}],
            "messages": list(self.histories[self.current]),
            "inferenceConfig": {"maxTokens": 512},
        }
        if self.tools[self.current]:
            body["toolConfig"] = {"tools": [{"toolSpec": {"name": "run_tests"}}, {"cachePoint": {"type": "default"}}]}
        return body

    def chat(self) -> dict[str, Any]:
        return {
            "model": "gpt-4.1",
            "max_tokens": 256,
            "messages": [{"role": "system", "content": self.systems[self.current]}, *[
                {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])}
                for m in self.histories[self.current] if isinstance(m, dict)
            ]],
        }


def parse(shape: str, body: dict[str, Any]) -> RequestInfo:
    """``body`` as the gateway sees it: sent as JSON, parsed by its protocol module."""
    raw = json.dumps(body).encode()
    if shape == "anthropic":
        return anthropic.parse_request("messages", raw)
    if shape == "anthropic-injected":
        info = anthropic.parse_request("messages", raw)
        inject(info, "5m")
        return info
    if shape == "converse":
        return bedrock.parse_request("converse", raw, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    return openai.parse_request("chat.completions", raw)


def requests(shape: str, start: list[Any], plan: list[tuple[Any, ...]]) -> list[RequestInfo]:
    """The bodies an agent sends while following ``plan`` from ``start``, parsed."""
    loop = Loop()
    loop.histories[0] = list(start)
    loop.histories[1] = list(start[:1])
    out = []
    for step in plan:
        loop.apply(step)
        body = {"anthropic": loop.anthropic, "anthropic-injected": loop.anthropic, "converse": loop.converse,
                "chat": loop.chat}[shape]()
        out.append(parse(shape, body))
    return out
