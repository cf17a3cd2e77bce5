"""Ledger schema, shared by the writer, the CLI and billing reconciliation.

Store URLs: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
``postgresql://user@host:port/db``. Money is stored exactly: TEXT holding a
decimal string in SQLite (its NUMERIC affinity would round through a double),
NUMERIC in PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

# (column, sqlite type, postgresql type). Order is the insert order.
REQUEST_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ts", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),  # unix epoch seconds, UTC
    ("request_id", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("key_name", "TEXT", "TEXT"),
    ("principal", "TEXT", "TEXT"),
    ("workflow", "TEXT", "TEXT"),
    ("session", "TEXT", "TEXT"),
    ("protocol", "TEXT", "TEXT"),  # openai | anthropic | bedrock
    ("route", "TEXT", "TEXT"),  # chat.completions, responses, embeddings, messages, count_tokens, converse, ...
    ("model", "TEXT", "TEXT"),
    ("upstream", "TEXT", "TEXT"),
    ("status", "INTEGER", "INTEGER"),
    ("input_uncached", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("cache_read", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("cache_write", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("cache_write_1h", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("output", "INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
    ("cost_usd", "TEXT NOT NULL DEFAULT '0'", "NUMERIC(28,12) NOT NULL DEFAULT 0"),
    ("latency_ms", "REAL", "DOUBLE PRECISION"),
    ("overhead_ms", "REAL", "DOUBLE PRECISION"),
    ("estimated", "INTEGER NOT NULL DEFAULT 0", "BOOLEAN NOT NULL DEFAULT FALSE"),
    # ok | refused | killed | upstream_error | client_abort | bad_request | unauthorized | not_found | error
    ("outcome", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("reason", "TEXT", "TEXT"),  # refusing budget / kill reason / error summary; never a credential
)

COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in REQUEST_COLUMNS)


def _ddl(dialect: str) -> list[str]:
    idx = 1 if dialect == "sqlite" else 2
    cols = ",\n  ".join(f"{c[0]} {c[idx]}" for c in REQUEST_COLUMNS)
    return [
        f"CREATE TABLE IF NOT EXISTS requests (\n  {cols}\n)",
        "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
        "CREATE INDEX IF NOT EXISTS requests_principal_ts ON requests (principal, ts)",
        "CREATE INDEX IF NOT EXISTS requests_workflow_ts ON requests (workflow, ts)",
        "CREATE INDEX IF NOT EXISTS requests_session ON requests (session)",
        # Kill switches and run-time budgets live beside the ledger so that every
        # replica sharing the store sees them, and a restart keeps them.
        "CREATE TABLE IF NOT EXISTS kill_switches (\n"
        "  scope TEXT NOT NULL, value TEXT NOT NULL, reason TEXT, created_ts "
        + ("REAL" if dialect == "sqlite" else "DOUBLE PRECISION")
        + " NOT NULL,\n  PRIMARY KEY (scope, value)\n)",
        "CREATE TABLE IF NOT EXISTS runtime_budgets (\n  name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_ts "
        + ("REAL" if dialect == "sqlite" else "DOUBLE PRECISION")
        + " NOT NULL\n)",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]


SQLITE_DDL = _ddl("sqlite")
POSTGRES_DDL = _ddl("postgresql")


@dataclass(frozen=True)
class StoreURL:
    dialect: str  # "sqlite" | "postgresql"
    target: str  # sqlite file path (or ":memory:") | libpq connection string

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if not path:
                raise ValueError(f"store {url!r} names no file; use sqlite:///tokenfuse.db")
            return cls("sqlite", path)
        if url == "sqlite://" or url == "sqlite://:memory:":
            return cls("sqlite", ":memory:")
        if url.startswith(("postgresql://", "postgres://")):
            return cls("postgresql", url)
        raise ValueError(
            f"store {url!r} is not a supported URL; use sqlite:///path/to/tokenfuse.db or postgresql://user@host:5432/db"
        )


def connect(url: str) -> Any:
    """Open a DB-API connection to the store and make sure the schema exists."""
    store = StoreURL.parse(url)
    if store.dialect == "sqlite":
        conn = sqlite3.connect(store.target, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        for stmt in SQLITE_DDL:
            conn.execute(stmt)
        return conn
    import psycopg

    pg = psycopg.connect(store.target, autocommit=True)
    with pg.cursor() as cur:
        # Several replicas may start at once; serialise the DDL.
        cur.execute("SELECT pg_advisory_lock(7482193)")
        try:
            for stmt in POSTGRES_DDL:
                cur.execute(stmt)
        finally:
            cur.execute("SELECT pg_advisory_unlock(7482193)")
    return pg


def placeholder(dialect: str) -> str:
    return "?" if dialect == "sqlite" else "%s"
