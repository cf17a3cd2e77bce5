"""Ledger schema, shared by the writer, the CLI and billing reconciliation.

Store URLs: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
``postgresql://user@host:port/db``. Money is stored exactly: TEXT holding a
decimal string in SQLite (its NUMERIC affinity would round through a double),
NUMERIC in PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 4

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
    # Added in schema version 2: the key's team and its tags (sorted, comma-joined).
    ("team", "TEXT", "TEXT"),
    ("tags", "TEXT", "TEXT"),
    # Added in schema version 3 (docs/caching.md): what prompt caching saved (negative: cost) against the
    # same request uncached, and the prompt's prefix fingerprint (hashes and offsets, never text).
    ("cache_saved_usd", "TEXT", "NUMERIC(28,12)"),
    ("prefix_fp", "TEXT", "TEXT"),
    # Added in schema version 4 (docs/routing.md): the model the caller asked for when a routing rule
    # served another one (`model` is always the model served); NULL when the request was not routed.
    ("requested_model", "TEXT", "TEXT"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in REQUEST_COLUMNS)


def _ddl(dialect: str) -> list[str]:
    idx = 1 if dialect == "sqlite" else 2
    real = "REAL" if dialect == "sqlite" else "DOUBLE PRECISION"
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
        "CREATE INDEX IF NOT EXISTS requests_team_ts ON requests (team, ts)",
        # Keys created at run time (`tokenfuse keys`): only the SHA-256 of the secret is kept.
        "CREATE TABLE IF NOT EXISTS runtime_keys (\n  name TEXT PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, "
        "spec TEXT NOT NULL, created_ts " + real + " NOT NULL, revoked_ts " + real + "\n)",
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

    def exists(self) -> bool:
        """False only for an SQLite file that is not there yet (reading a ledger must not create it)."""
        return self.dialect != "sqlite" or self.target == ":memory:" or Path(self.target).exists()


class SchemaError(RuntimeError):
    """The store's schema cannot be used by this version of tokenfuse."""


# Schema versions are migrations. A fresh store is created from the current DDL
# and stamped SCHEMA_VERSION; an older store is brought forward by running, in
# order, the statements of every version above its own. Version 1 is the base
# DDL, so the table starts empty. To change the schema: bump SCHEMA_VERSION, add
# MIGRATIONS[new_version] = (sqlite statements, postgresql statements), and keep
# REQUEST_COLUMNS describing the end state.
Migration = tuple[tuple[str, ...], tuple[str, ...]]
MIGRATIONS: dict[int, Migration] = {
    # Teams and tags (docs/operations.md); the runtime_keys table is created by the DDL that follows.
    2: (
        ("ALTER TABLE requests ADD COLUMN team TEXT", "ALTER TABLE requests ADD COLUMN tags TEXT"),
        ("ALTER TABLE requests ADD COLUMN team TEXT", "ALTER TABLE requests ADD COLUMN tags TEXT"),
    ),
    # Prompt caching savings and prefix fingerprints (docs/caching.md).
    3: (
        ("ALTER TABLE requests ADD COLUMN cache_saved_usd TEXT", "ALTER TABLE requests ADD COLUMN prefix_fp TEXT"),
        (
            "ALTER TABLE requests ADD COLUMN cache_saved_usd NUMERIC(28,12)",
            "ALTER TABLE requests ADD COLUMN prefix_fp TEXT",
        ),
    ),
    # Budget-aware routing: the model asked for, beside the model served (docs/routing.md).
    4: (
        ("ALTER TABLE requests ADD COLUMN requested_model TEXT",),
        ("ALTER TABLE requests ADD COLUMN requested_model TEXT",),
    ),
}


def _scalar(conn: Any, sql: str) -> Any:
    cur = conn.execute(sql)
    row = cur.fetchone()
    return None if row is None else row[0]


def migrate(
    conn: Any, dialect: str, target: int = SCHEMA_VERSION, migrations: Mapping[int, Migration] | None = None
) -> int:
    """Create or upgrade the schema on an open connection; return the version it ends at.

    The caller serialises concurrent callers (see :func:`connect`).
    """
    steps = MIGRATIONS if migrations is None else migrations
    ddl = SQLITE_DDL if dialect == "sqlite" else POSTGRES_DDL
    p = placeholder(dialect)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw = _scalar(conn, "SELECT value FROM meta WHERE key = 'schema_version'")
    if raw is None:
        if dialect == "sqlite":
            existed = _scalar(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'")
        else:
            existed = _scalar(conn, "SELECT to_regclass('requests')")
        # A requests table without a stamp predates the meta table: version 1.
        current = 1 if existed is not None else target
        if existed is None:
            for stmt in ddl:
                conn.execute(stmt)
        conn.execute(f"INSERT INTO meta (key, value) VALUES ('schema_version', {p})", (str(current),))
    else:
        current = int(raw)
    if current > target:
        raise SchemaError(
            f"the store is at schema version {current} but this tokenfuse knows only up to {target}; "
            "upgrade tokenfuse (every replica sharing a store must run the same or a newer version)"
        )
    for version in range(current + 1, target + 1):
        sqlite_stmts, pg_stmts = steps[version]
        for stmt in sqlite_stmts if dialect == "sqlite" else pg_stmts:
            conn.execute(stmt)
        conn.execute(f"UPDATE meta SET value = {p} WHERE key = 'schema_version'", (str(version),))
    # New tables and indexes are idempotent; creating them last covers stores
    # that were stamped before they were added.
    for stmt in ddl:
        conn.execute(stmt)
    return target


def schema_version(conn: Any) -> int | None:
    raw = _scalar(conn, "SELECT value FROM meta WHERE key = 'schema_version'")
    return None if raw is None else int(raw)


def _enable_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    # Switching the journal mode answers "database is locked" at once, without
    # the busy handler, while another connection is creating or migrating the
    # same new file; wait for it like any other lock.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def connect(url: str) -> Any:
    """Open a DB-API connection to the store and make sure the schema exists and is current."""
    store = StoreURL.parse(url)
    if store.dialect == "sqlite":
        conn = sqlite3.connect(store.target, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            # IMMEDIATE takes the write lock up front, so two processes starting
            # at once migrate one after the other.
            conn.execute("BEGIN IMMEDIATE")
            try:
                migrate(conn, "sqlite")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn
    import psycopg

    pg = psycopg.connect(store.target, autocommit=True)
    try:
        # Several replicas may start at once; serialise the DDL.
        pg.execute("SELECT pg_advisory_lock(7482193)")
        try:
            with pg.transaction():
                migrate(pg, "postgresql")
        finally:
            pg.execute("SELECT pg_advisory_unlock(7482193)")
    except BaseException:
        pg.close()
        raise
    return pg


def placeholder(dialect: str) -> str:
    return "?" if dialect == "sqlite" else "%s"


def redact(url: str) -> str:
    """The store URL as it may appear in a log line or error: any password replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    if not url.startswith(("postgresql://", "postgres://")):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.username is not None:
        netloc = f"{parts.username}:***@{netloc}"
    query = "&".join(
        "password=***" if kv.startswith("password=") else kv for kv in parts.query.split("&") if kv
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
