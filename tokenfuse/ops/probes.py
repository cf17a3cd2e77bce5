"""Liveness and readiness: what a load balancer or Kubernetes asks before sending traffic.

``/healthz`` answers as long as the event loop runs. ``/readyz`` checks what a
request needs: the config loaded and the gateway started, the ledger store
answering, and the counters answering (or, with ``on_counter_failure: open``,
the gateway admitting without them, which is ready by the operator's choice).
Each check's result is kept for ``CACHE_S`` so a probe storm costs one store
round trip a second, and every check has a deadline so a hung store makes the
probe answer "not ready" rather than hang.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tokenfuse.ledger.schema import StoreURL, redact

CACHE_S = 1.0
DEADLINE_S = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


def ping_store(url: str, timeout_s: float = DEADLINE_S) -> None:
    """One cheap read of the ledger store; raises when it cannot be read.

    Never the schema-migrating :func:`tokenfuse.ledger.schema.connect`: a probe
    must not take SQLite's write lock from the ledger writer.
    """
    store = StoreURL.parse(url)
    if store.dialect == "sqlite":
        if store.target == ":memory:":
            return
        conn = sqlite3.connect(f"file:{store.target}?mode=ro", uri=True, timeout=timeout_s)
        try:
            conn.execute("SELECT 1 FROM requests LIMIT 1").fetchall()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(store.target, autocommit=True, connect_timeout=max(1, int(timeout_s))) as pg:
        pg.execute("SELECT 1").fetchall()


class Readiness:
    """Combines the checks; the callables are the gateway's, so this stays testable without one."""

    def __init__(
        self,
        *,
        started: Callable[[], bool],
        store_url: str,
        counters_ping: Callable[[], Awaitable[None] | None],
        fail_open: bool,
        store_ping: Callable[[str], None] = ping_store,
    ) -> None:
        self._started = started
        self._store_url = store_url
        self._counters_ping = counters_ping
        self._fail_open = fail_open
        self._store_ping = store_ping
        self._cache: tuple[float, bool, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): body lists every check with ``ok`` and, when not ok, why."""
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1], cached[2]
        async with self._lock:  # concurrent probes share one round of checks
            cached = self._cache
            if cached is not None and time.monotonic() - cached[0] < CACHE_S:
                return cached[1], cached[2]
            ready, body = await self._run()
            self._cache = (time.monotonic(), ready, body)
            return ready, body

    async def _run(self) -> tuple[bool, dict[str, Any]]:
        if not self._started():
            starting = {"ok": False, "detail": "the gateway is starting"}
            return False, {"status": "not ready", "checks": {"config": starting}, "reason": "config: starting"}
        store, counters = await asyncio.gather(self._store(), self._counters())
        checks = {"config": Check(True, "loaded"), "store": store, "counters": counters}
        ready = all(c.ok for c in checks.values())
        reasons = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok]
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
        }
        if reasons:
            body["reason"] = "; ".join(reasons)
        return ready, body

    async def _store(self) -> Check:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._store_ping, self._store_url), DEADLINE_S + 1)
        except TimeoutError:
            return Check(False, f"the ledger store {redact(self._store_url)} did not answer within {DEADLINE_S:g}s")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Check(False, f"cannot read the ledger store {redact(self._store_url)}: {first}")
        return Check(True, "reachable")

    async def _counters(self) -> Check:
        try:
            pending = self._counters_ping()
            if pending is None:
                return Check(True, "in memory")
            await asyncio.wait_for(pending, DEADLINE_S)
        except Exception as exc:
            why = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            if self._fail_open:
                # The operator chose to keep serving without shared counters.
                return Check(True, f"unreachable ({why}); admitting per on_counter_failure: open")
            return Check(
                False, f"unreachable ({why}); refusing metered requests per on_counter_failure: closed"
            )
        return Check(True, "reachable")
