"""Scripted agent conversations for guard tests: real request bodies parsed by
the real protocol module, with the usage a provider would report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.protocols import anthropic
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

CLAUDE = Price(
    "test-claude", Decimal("3.00"), Decimal("15.00"), cache_read=Decimal("0.30"), cache_write=Decimal("3.75")
)
NO_CACHE = Price("plain-model", Decimal("1.00"), Decimal("2.00"))


def ctx(session: str | None = "s1", key: str = "alice-droid", model: str = "test-claude") -> RequestContext:
    return RequestContext(key, "alice", "droid", session, model, "anthropic")


def request(body: dict[str, Any]) -> tuple[RequestInfo, bytes]:
    raw = json.dumps(body).encode()
    return anthropic.parse_request("messages", raw), raw


@dataclass
class Agent:
    """An agent that re-sends its whole history each step (Anthropic Messages)."""

    task: str = "fix the failing test"
    system: str = "You are a coding agent."
    markers: bool = False
    model: str = "test-claude"
    messages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messages = [{"role": "user", "content": [{"type": "text", "text": self.task}]}]

    def body(self) -> dict[str, Any]:
        messages = [dict(m) for m in self.messages]
        system: Any = self.system
        if self.markers:
            system = [{"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}]
            last = messages[-1]
            blocks = [dict(b) for b in last["content"]]
            blocks[-1]["cache_control"] = {"type": "ephemeral"}
            messages[-1] = {**last, "content": blocks}
        return {"model": self.model, "max_tokens": 256, "system": system, "messages": messages}

    def step(self, reply: str) -> None:
        """The model answered; the agent appends the answer and a tool result."""
        n = len(self.messages)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        self.messages.append({"role": "user", "content": [{"type": "text", "text": f"tool result {n}"}]})


def uncached(total: int, output: int = 100) -> Usage:
    return Usage(input_uncached=total, output=output)


def cached(total: int, previous: int, output: int = 100) -> Usage:
    """A working cache: the previous prompt is read, the new turn is written."""
    return Usage(input_uncached=0, cache_read=previous, cache_write=total - previous, output=output)
