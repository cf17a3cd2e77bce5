from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tokenfuse.ledger.schema import (
    SCHEMA_VERSION,
    SQLITE_DDL,
    SchemaError,
    connect,
    migrate,
    redact,
    schema_version,
)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_fresh_sqlite_store_is_wal_and_stamped(sqlite_url: str, tmp_path: Path) -> None:
    conn = connect(sqlite_url)
    conn.close()
    raw = sqlite3.connect(tmp_path / "ledger.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert schema_version(raw) == SCHEMA_VERSION
    assert "cost_usd" in _columns(raw, "requests")


def test_connect_twice_is_idempotent(sqlite_url: str) -> None:
    connect(sqlite_url).close()
    conn = connect(sqlite_url)
    assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 1
    conn.close()


_STEPS = {
    2: (("ALTER TABLE requests ADD COLUMN region TEXT",), ("ALTER TABLE requests ADD COLUMN region TEXT",)),
    3: (("CREATE TABLE notes (id INTEGER)",), ("CREATE TABLE notes (id INTEGER)",)),
}


def test_migrations_run_in_order_from_the_stored_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate(conn, "sqlite", target=1, migrations={}) == 1
    assert "region" not in _columns(conn, "requests")
    assert migrate(conn, "sqlite", target=3, migrations=_STEPS) == 3
    assert "region" in _columns(conn, "requests")
    assert _columns(conn, "notes") == ["id"]
    assert schema_version(conn) == 3
    # Already current: nothing runs again (a second ALTER would fail).
    assert migrate(conn, "sqlite", target=3, migrations=_STEPS) == 3


def test_unstamped_store_counts_as_version_one(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    for stmt in SQLITE_DDL:
        if "meta" not in stmt:
            conn.execute(stmt)
    migrate(conn, "sqlite", target=2, migrations=_STEPS)
    assert "region" in _columns(conn, "requests")
    assert schema_version(conn) == 2


def test_a_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    migrate(conn, "sqlite", target=3, migrations=_STEPS)
    with pytest.raises(SchemaError, match="schema version 3"):
        migrate(conn, "sqlite", target=1, migrations={})


@pytest.mark.services
def test_postgresql_store_is_created_and_stamped(pg_url: str) -> None:
    connect(pg_url).close()
    conn = connect(pg_url)
    assert schema_version(conn) == SCHEMA_VERSION
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'requests' AND table_schema = current_schema()"
        ).fetchall()
    ]
    assert "cost_usd" in cols and "cache_write_1h" in cols
    conn.close()


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert "s3cret" not in redact("postgresql://u@db/x?sslmode=require&password=s3cret")
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


def test_many_openers_of_one_new_file_all_succeed(tmp_path: Path) -> None:
    import threading

    failures: list[BaseException] = []
    for trial in range(20):
        url = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        barrier = threading.Barrier(4)

        def open_it(url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                connect(url).close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_a_version_3_store_gains_requested_model(tmp_path: Path) -> None:
    from tokenfuse.ledger.record import LedgerRow
    from tokenfuse.ledger.schema import REQUEST_COLUMNS

    path = tmp_path / "v3.db"
    raw = sqlite3.connect(path, isolation_level=None)
    cols = ", ".join(f"{c[0]} {c[1]}" for c in REQUEST_COLUMNS if c[0] != "requested_model")
    raw.execute(f"CREATE TABLE requests ({cols})")
    raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    raw.execute("INSERT INTO requests (ts, request_id, model, outcome) VALUES (1.0, 'old', 'm', 'ok')")
    raw.close()
    conn = connect(f"sqlite:///{path}")
    assert schema_version(conn) == SCHEMA_VERSION == 4
    assert conn.execute("SELECT model, requested_model FROM requests").fetchall() == [("m", None)]
    row = LedgerRow(2.0, "new", None, None, None, None, None, None, "small-model", None, 200,
                    requested_model="big-model")
    conn.execute(f"INSERT INTO requests VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})", row.as_tuple("sqlite"))
    back = conn.execute("SELECT * FROM requests WHERE request_id = 'new'").fetchone()
    assert LedgerRow.from_tuple(back) == row
    # A row an older version journaled (one value fewer) still reads back.
    assert LedgerRow.from_tuple(row.as_tuple("sqlite")[:-1]).requested_model is None
    conn.close()
