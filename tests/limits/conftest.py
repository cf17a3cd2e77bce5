"""Fixtures for the limiter tests: a private Redis key prefix, configs, contexts."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tokenfuse.config import Config
from tokenfuse.ledger import schema
from tokenfuse.ledger.record import LedgerRow
from tokenfuse.limits.bounds import Bound
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.limits.context import RequestContext


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on a fresh event loop (no async plugin is installed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> bool:
    """Poll for a condition; the bound is generous so a loaded machine does not
    flake, and nothing asserts on how long it took."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def by_name(statuses: list[BudgetStatus]) -> dict[str, BudgetStatus]:
    return {s.name: s for s in statuses}


def make_config(budgets: list[dict[str, Any]] | None = None, **kw: Any) -> Config:
    # Refusals are asserted at once here; waiting for in-flight reservations is
    # tested on its own (test_limiter.py::test_waits_for_inflight_reservations...).
    kw.setdefault("admission_wait_ms", 0)
    return Config.model_validate({"budgets": budgets or [], **kw})


def ctx(
    key: str = "alice-droid",
    principal: str = "alice",
    workflow: str = "droid",
    session: str | None = None,
    model: str = "test-model",
    protocol: str = "anthropic",
) -> RequestContext:
    return RequestContext(key, principal, workflow, session, model, protocol)


def bound(usd: str = "0.01", input_tokens: int = 100, output: int = 100, cache_write: bool = True) -> Bound:
    return Bound(
        Decimal(usd),
        {
            "input_uncached": input_tokens,
            "cache_read": input_tokens,
            "cache_write": input_tokens if cache_write else 0,
            "output": output,
            "total": input_tokens + output,
        },
    )


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"tftest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(k)
    client.close()


def insert_rows(store: str, rows: list[dict[str, Any]]) -> None:
    """Write ledger rows the way the ledger writer would (defaults for what a row leaves out)."""
    dialect = schema.StoreURL.parse(store).dialect
    marks = ", ".join(schema.placeholder(dialect) for _ in schema.COLUMN_NAMES)
    sql = f"INSERT INTO requests ({', '.join(schema.COLUMN_NAMES)}) VALUES ({marks})"
    base: dict[str, Any] = dict.fromkeys(("key_name", "principal", "workflow", "session", "route", "upstream", "status"))
    base |= {"request_id": "r", "protocol": "anthropic", "model": "test-model"}
    conn = schema.connect(store)
    try:
        for r in rows:
            row = LedgerRow(**(base | r | {"cost_usd": Decimal(r.get("cost_usd", "0"))}))
            conn.execute(sql, row.as_tuple(dialect))
    finally:
        conn.close()
