"""One lazily opened, thread-safe connection to the store, for the small
tables beside the ledger (kill switches, run-time budgets, fired alerts).

Callers reach it through ``asyncio.to_thread`` from several tasks, so every
statement runs under one lock. A statement that fails drops the connection:
the next call reopens it instead of failing forever on a dead socket
(PostgreSQL restarted, a network blip).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tokenfuse.ledger.schema import StoreURL, connect, placeholder


class StoreConnection:
    def __init__(self, url: str, on_open: Callable[[Any, str], None] | None = None) -> None:
        """`on_open(conn, dialect)` runs once on every fresh connection (e.g. to create a table)."""
        self.url = url
        self.dialect = StoreURL.parse(url).dialect
        self.p = placeholder(self.dialect)
        self._on_open = on_open
        self._lock = threading.Lock()
        self._conn: Any = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement; its rowcount and any rows it returned."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                cur = self._conn.cursor()
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description is not None else []
                return cur.rowcount, rows
            except Exception:
                self._reset()
                raise

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _open(self) -> Any:
        conn = connect(self.url)
        if self._on_open is not None:
            try:
                self._on_open(conn, self.dialect)
            except BaseException:
                close_quietly(conn)
                raise
        return conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)


def close_quietly(conn: Any) -> None:
    """Close a DB-API connection that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
