"""The simulator's run-time settings and its record of what it served."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tokenfuse.usage import TOKEN_CLASSES, Usage

FAULTS = ("500", "429", "break", "hang", "garbage")


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
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be a non-negative integer")
        new = replace(self, **changes)
        if new.fault is not None:
            new.fault = str(new.fault)
        if new.chunk_tokens < 1:
            raise ConfigError("chunk_tokens must be at least 1")
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
