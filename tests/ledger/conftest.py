"""Ledger fixtures: a store per test, SQLite file or an isolated PostgreSQL schema."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenfuse.ledger.record import LedgerRow


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL store URL whose tables live in a fresh schema, dropped afterwards,
    so that tests (and other suites sharing the database) never see each other's rows."""
    import psycopg

    schema = f"tf_ledger_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(postgres_url, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


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
