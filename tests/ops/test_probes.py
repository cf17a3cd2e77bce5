"""Readiness checks against real stores (an SQLite file, a closed port) without a gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

from tokenfuse.ledger.schema import connect
from tokenfuse.limits.redis import RedisCounters
from tokenfuse.ops.probes import Readiness


def _sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    connect(url).close()
    return url


def _check(r: Readiness) -> tuple[bool, dict]:  # type: ignore[type-arg]
    return asyncio.run(r.check())


def test_ready_with_memory_counters(tmp_path: Path) -> None:
    r = Readiness(started=lambda: True, store_url=_sqlite(tmp_path), counters_ping=lambda: None, fail_open=False)
    ready, body = _check(r)
    assert ready and body["status"] == "ready" and "reason" not in body


def test_not_ready_while_starting(tmp_path: Path) -> None:
    r = Readiness(started=lambda: False, store_url=_sqlite(tmp_path), counters_ping=lambda: None, fail_open=False)
    ready, body = _check(r)
    assert not ready and body["reason"] == "config: starting"


def test_missing_store_is_not_ready(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    r = Readiness(started=lambda: True, store_url=url, counters_ping=lambda: None, fail_open=False)
    ready, body = _check(r)
    assert not ready and body["reason"].startswith("store: cannot read the ledger store")
    assert not (tmp_path / "absent.db").exists()  # a probe never creates the store


def _dead_redis() -> Awaitable[None]:
    return RedisCounters("redis://127.0.0.1:1/0").ping()


def test_dead_redis_depends_on_the_failure_mode(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    closed = Readiness(started=lambda: True, store_url=url, counters_ping=_dead_redis, fail_open=False)
    ready, body = _check(closed)
    assert not ready and "on_counter_failure: closed" in body["reason"]
    opened = Readiness(started=lambda: True, store_url=url, counters_ping=_dead_redis, fail_open=True)
    ready, body = _check(opened)
    assert ready and "on_counter_failure: open" in body["checks"]["counters"]["detail"]
