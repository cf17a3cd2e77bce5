"""Who and what a request is, as budgets, kill switches and sessions see it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestContext:
    key_name: str
    principal: str
    workflow: str
    session: str | None
    model: str
    protocol: str  # openai | anthropic | bedrock
    team: str | None = None
    tags: tuple[str, ...] = ()

    def field(self, name: str) -> str | None:
        # Budget `match` and kill-switch scopes use these names; `tags` is a
        # set, matched apart (Budget.matches).
        if name == "key":
            return self.key_name
        if name == "tags":
            return ",".join(self.tags) or None
        value: str | None = getattr(self, name)
        return value
