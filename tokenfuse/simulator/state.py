"""The simulator's run-time settings and its record of what it served."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tokenfuse.usage import TOKEN_CLASSES, Usage

FAULTS = ("500", "429", "break", "hang", "garbage")
JSON_DUPLICATES = ("last", "first")
CACHE_RULES = ("simple", "provider")
_BOOLEANS = frozenset({"bill_abandoned"})


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class SimConfig:
    output_tokens: int = 64
    latency_ms: int = 0
    chunk_tokens: int = 4
    chunk_delay_ms: int = 0
    # Output tokens spent on hidden reasoning (OpenAI reports them apart).
    reasoning_tokens: int = 0
    embedding_dimensions: int = 8
    fault: str | None = None
    # How many more requests get `fault`; None means every request.
    fault_count: int | None = None
    # Bill a started generation in full even when its answer never reaches
    # the client (client gone, break, hang, garbage), as real providers do.
    bill_abandoned: bool = False
    # >1: ignore the request's output limit L and generate L * overrun_factor.
    overrun_factor: int = 1
    # Extra input tokens billed for each server-side tool in a request.
    server_tool_tokens: int = 0
    # Which occurrence of a duplicated JSON key wins ("last" is Python's).
    json_duplicates: str = "last"
    # "simple": every block boundary up to a marker is readable, no minimum.
    # "provider": the documented rules (minimum lengths, lookups only at
    # breakpoints and 20 blocks before them); see docs/simulator.md.
    cache_rules: str = "simple"

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with ``changes`` applied; raises ConfigError naming a bad key."""
        known = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            if key == "fault":
                if value is not None and str(value) not in FAULTS:
                    raise ConfigError(f"fault must be one of {', '.join(FAULTS)} or null")
            elif key == "fault_count":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise ConfigError("fault_count must be a non-negative integer or null")
            elif key in _BOOLEANS:
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false")
            elif key == "json_duplicates":
                if value not in JSON_DUPLICATES:
                    raise ConfigError(f"json_duplicates must be one of {', '.join(JSON_DUPLICATES)}")
            elif key == "cache_rules":
                if value not in CACHE_RULES:
                    raise ConfigError(f"cache_rules must be one of {', '.join(CACHE_RULES)}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be a non-negative integer")
        new = replace(self, **changes)
        if new.fault is not None:
            new.fault = str(new.fault)
        if new.chunk_tokens < 1:
            raise ConfigError("chunk_tokens must be at least 1")
        if new.overrun_factor < 1:
            raise ConfigError("overrun_factor must be at least 1 (1 honours the request's limit)")
        return new

    def take_fault(self) -> str | None:
        if self.fault is None:
            return None
        if self.fault_count is not None:
            if self.fault_count <= 0:
                return None
            self.fault_count -= 1
        return self.fault

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Served:
    protocol: str
    route: str
    model: str
    stream: bool
    auth: str
    usage: Usage
    status: int
    complete: bool
    request_id: str = ""
    fault: str | None = None
    # The usage is the whole generation although the client never received
    # it (bill_abandoned): what a provider bills for an abandoned request.
    billed_after_disconnect: bool = False
    # Server-side tool uses billed (web search, web fetch).
    server_tool_uses: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "route": self.route,
            "model": self.model,
            "stream": self.stream,
            "auth": self.auth,
            "usage": self.usage.as_dict(),
            "status": self.status,
            "complete": self.complete,
            "request_id": self.request_id,
            "fault": self.fault,
            "billed_after_disconnect": self.billed_after_disconnect,
            "server_tool_uses": self.server_tool_uses,
        }


class ServedLog:
    """Recent requests (bounded, so a long benchmark cannot exhaust memory)
    and running totals per model and token class (never trimmed)."""

    __slots__ = ("_totals", "count", "records")

    def __init__(self, keep: int = 100_000) -> None:
        self.records: deque[Served] = deque(maxlen=keep)
        self._totals: dict[str, Usage] = {}
        self.count = 0

    def add(self, record: Served) -> Served:
        self.records.append(record)
        self.count += 1
        total = self._totals.get(record.model)
        self._totals[record.model] = record.usage + (Usage() if total is None else total)
        return record

    def clear(self) -> None:
        self.records.clear()
        self._totals.clear()
        self.count = 0

    def totals(self) -> dict[str, dict[str, int]]:
        return {model: usage.as_dict() for model, usage in self._totals.items()}

    def total(self) -> Usage:
        out = Usage()
        for usage in self._totals.values():
            out = out + usage
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            # list() copies in one step, so a request finishing meanwhile on the
            # server thread cannot break the iteration.
            "requests": [r.as_dict() for r in list(self.records)],
            "totals": self.totals(),
            "count": self.count,
            "classes": list(TOKEN_CLASSES),
        }
