"""Ledger test helpers; the store fixtures (sqlite_url, pg_url, store_url) are in tests/conftest.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tokenfuse.ledger.record import LedgerRow


def make_row(i: int = 0, **overrides: Any) -> LedgerRow:
    values: dict[str, Any] = {
        "ts": 1_800_000_000.0 + i,
        "request_id": f"req-{i:08d}",
        "key_name": "alice-droid",
        "principal": "alice",
        "workflow": "droid",
        "session": "s1",
        "protocol": "anthropic",
        "route": "messages",
        "model": "test-model",
        "upstream": "anthropic",
        "status": 200,
        "input_uncached": 10,
        "cache_read": 20,
        "cache_write": 3,
        "cache_write_1h": 4,
        "output": 5,
        "cost_usd": Decimal("0.000123"),
        "latency_ms": 12.5,
        "overhead_ms": 0.25,
        "estimated": False,
        "outcome": "ok",
        "reason": None,
    }
    values.update(overrides)
    return LedgerRow(**values)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll for a condition; the timeout only bounds a broken run, nothing asserts on time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
