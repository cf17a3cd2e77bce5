from __future__ import annotations

import logging
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from tests.ledger.conftest import make_row, wait_until
from tokenfuse.ledger.query import rows, usage_totals
from tokenfuse.ledger.schema import connect
from tokenfuse.ledger.writer import LedgerStoreError, LedgerWriter, load_spill


def _count(url: str) -> int:
    conn = connect(url)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


def _ids(url: str) -> list[str]:
    conn = connect(url)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM requests ORDER BY request_id").fetchall()]
    finally:
        conn.close()


def test_full_batches_commit_without_waiting_for_the_interval(store_url: str) -> None:
    # An interval of ten minutes: only the size trigger can commit before flush().
    w = LedgerWriter(store_url, batch_interval_ms=600_000, batch_size=100)
    w.start()
    try:
        for i in range(250):
            w.write(make_row(i))
        assert wait_until(lambda: w.rows_written >= 200)
        assert w.rows_written == 200
        assert _count(store_url) == 200  # whole batches only
        assert w.batches_committed == 2
        assert w.pending == 50
        assert w.flush()
        assert _count(store_url) == 250
        assert w.batches_committed == 3
    finally:
        w.close()


@pytest.mark.services
def test_each_postgresql_batch_is_one_transaction(pg_url: str) -> None:
    w = LedgerWriter(pg_url, batch_interval_ms=600_000, batch_size=100)
    w.start()
    for i in range(250):
        w.write(make_row(i))
    w.close()
    conn = connect(pg_url)
    # Rows inserted by one transaction share its xmin.
    per_tx = sorted(
        r[0] for r in conn.execute("SELECT COUNT(*) FROM requests GROUP BY xmin::text").fetchall()
    )
    conn.close()
    assert per_tx == [50, 100, 100]


def test_partial_batch_commits_after_the_interval(sqlite_url: str) -> None:
    w = LedgerWriter(sqlite_url, batch_interval_ms=20, batch_size=1_000_000)
    w.start()
    try:
        for i in range(5):
            w.write(make_row(i))
        assert wait_until(lambda: w.rows_written == 5)
        assert _count(sqlite_url) == 5
    finally:
        w.close()


def test_close_loses_nothing(store_url: str) -> None:
    w = LedgerWriter(store_url, batch_interval_ms=200, batch_size=1000)
    w.start()
    for i in range(10_000):
        w.write(make_row(i))
    w.close()
    assert w.pending == 0
    assert w.rows_written == 10_000
    assert _ids(store_url) == [f"req-{i:08d}" for i in range(10_000)]


def test_flush_waits_for_everything_written_before_it(store_url: str) -> None:
    w = LedgerWriter(store_url, batch_interval_ms=600_000, batch_size=1_000_000)
    w.start()
    try:
        for i in range(3):
            w.write(make_row(i))
        assert w.flush(timeout=20)
        assert _count(store_url) == 3
        assert w.flush(timeout=20)  # nothing new: returns at once
    finally:
        w.close()


def test_concurrent_writers_from_many_threads(store_url: str) -> None:
    w = LedgerWriter(store_url, batch_interval_ms=50, batch_size=500)
    w.start()
    threads, per = 8, 1500
    barrier = threading.Barrier(threads)

    def produce(t: int) -> None:
        barrier.wait()
        for i in range(per):
            w.write(make_row(t * per + i))

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    w.close()
    assert w.rows_written == threads * per
    assert _ids(store_url) == [f"req-{i:08d}" for i in range(threads * per)]


def test_sqlite_store_runs_in_wal_mode(sqlite_url: str, tmp_path: Path) -> None:
    w = LedgerWriter(sqlite_url)
    w.start()
    w.write(make_row())
    w.close()
    conn = sqlite3.connect(tmp_path / "ledger.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_costs_stay_exact_decimals(store_url: str) -> None:
    w = LedgerWriter(store_url)
    w.start()
    for i in range(3):
        w.write(make_row(i, model="a", cost_usd=Decimal("0.1")))
    for i in range(3, 10):
        w.write(make_row(i, model="b", cost_usd=Decimal("0.000000075")))
    w.close()
    totals = usage_totals(store_url)
    # 0.1 * 3 in binary floating point would be 0.30000000000000004.
    assert totals["by_model"]["a"]["cost_usd"] == "0.300000"
    assert totals["by_model"]["b"]["cost_usd"] == "0.000000525"
    assert totals["cost_usd"] == "0.300000525"
    assert [r.cost_usd for r in rows(store_url)][3:] == [Decimal("0.000000075")] * 7


def test_rows_arrive_after_an_sqlite_lock_is_released(sqlite_url: str, tmp_path: Path) -> None:
    w = LedgerWriter(
        sqlite_url,
        batch_interval_ms=10,
        batch_size=1000,
        sqlite_busy_timeout_ms=20,
        retry_initial_s=0.01,
        retry_max_s=0.05,
    )
    w.start()
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(100):
            w.write(make_row(i))  # never blocks, never raises
        assert wait_until(lambda: w.errors >= 2)
        for i in range(100, 200):
            w.write(make_row(i))
        assert w.rows_written == 0
        assert w.pending == 200
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert w.flush(timeout=20)
    w.close()
    assert _ids(sqlite_url) == [f"req-{i:08d}" for i in range(200)]


@pytest.mark.services
def test_rows_survive_a_dropped_postgresql_connection(pg_url: str, postgres_url: str) -> None:
    import psycopg

    w = LedgerWriter(pg_url, batch_interval_ms=10, retry_initial_s=0.01, retry_max_s=0.05)
    w.start()
    w.write(make_row(0))
    assert w.flush(timeout=20)
    app = pg_url.rsplit("application_name=", 1)[1]
    admin = psycopg.connect(postgres_url, autocommit=True)
    # What a server restart looks like to the writer: its session is gone.
    killed = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()
    admin.close()
    assert killed
    for i in range(1, 50):
        w.write(make_row(i))
    assert w.flush(timeout=20)
    w.close()
    assert w.errors >= 1
    assert _count(pg_url) == 50


def test_close_spills_rows_the_store_never_took(sqlite_url: str, tmp_path: Path) -> None:
    w = LedgerWriter(
        sqlite_url,
        batch_interval_ms=10,
        sqlite_busy_timeout_ms=20,
        retry_initial_s=0.01,
        retry_max_s=0.05,
        spill_dir=tmp_path,
    )
    w.start()
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(30):
            w.write(make_row(i, cost_usd=Decimal("0.000000075"), estimated=i % 2 == 0))
        w.close(timeout=0.2)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert w.spilled_to is not None and w.spilled_to.parent == tmp_path
    assert _count(sqlite_url) == 0
    assert load_spill(sqlite_url, w.spilled_to) == 30
    back = rows(sqlite_url)
    assert back == [make_row(i, cost_usd=Decimal("0.000000075"), estimated=i % 2 == 0) for i in range(30)]


def test_start_fails_clearly_when_the_store_cannot_be_opened(tmp_path: Path) -> None:
    w = LedgerWriter(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(LedgerStoreError, match="cannot open the ledger store"):
        w.start()


def test_store_errors_never_show_the_password() -> None:
    w = LedgerWriter("postgresql://postgres:s3cret-pw@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(LedgerStoreError) as info:
        w.start()
    assert "s3cret-pw" not in str(info.value)
    assert "***" in str(info.value)


def test_a_growing_backlog_is_reported_not_dropped(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = LedgerWriter(sqlite_url, pending_warn_rows=10, spill_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="tokenfuse.ledger"):
        for i in range(45):  # never started: everything stays pending
            w.write(make_row(i))
    warnings = [r for r in caplog.records if "held in memory" in r.getMessage()]
    assert len(warnings) == 3  # at 10, 20 and 40 pending rows
    assert w.pending == 45
    w.close()
    assert w.spilled_to is not None
    assert load_spill(sqlite_url, w.spilled_to) == 45


def test_unknown_store_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not a supported URL"):
        LedgerWriter("mysql://x")


def test_a_process_that_exits_without_close_still_commits(sqlite_url: str) -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        from tests.ledger.conftest import make_row
        from tokenfuse.ledger.writer import LedgerWriter
        w = LedgerWriter({sqlite_url!r}, batch_interval_ms=600_000, batch_size=1_000_000)
        w.start()
        for i in range(5000):
            w.write(make_row(i))
        """
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=120)
    assert _count(sqlite_url) == 5000


class _Unstorable:
    pass


def test_a_row_the_store_refuses_does_not_hold_back_the_others(store_url: str, tmp_path: Path) -> None:
    import json

    w = LedgerWriter(store_url, batch_interval_ms=10, spill_dir=tmp_path)
    w.start()
    try:
        for i in range(20):
            if i == 7:
                w.write(make_row(i, request_id=None))  # NOT NULL violated
            elif i == 12:
                w.write(make_row(i, cost_usd=_Unstorable()))  # no way to store this value
            else:
                w.write(make_row(i))
        assert w.flush(timeout=20)
        for i in range(20, 30):
            w.write(make_row(i))
        assert w.flush(timeout=20)
    finally:
        w.close()
    assert w.rows_rejected == 2
    assert w.rows_written == 28
    assert _ids(store_url) == [f"req-{i:08d}" for i in range(30) if i not in (7, 12)]
    assert w.rejected_to is not None
    saved = [json.loads(line) for line in w.rejected_to.read_text().splitlines()]
    assert [s[1] for s in saved] == [None, "req-00000012"]


def test_sigkill_keeps_every_committed_batch_whole(sqlite_url: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import itertools, sys
        from tests.ledger.conftest import make_row
        from tokenfuse.ledger.writer import LedgerWriter
        w = LedgerWriter({sqlite_url!r}, batch_interval_ms=600_000, batch_size=100)
        w.start()
        for i in range(1000):
            w.write(make_row(i))
        assert w.flush(60)
        print("flushed", flush=True)
        for i in itertools.count(1000):
            w.write(make_row(i))
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "flushed"
        assert wait_until(lambda: _count(sqlite_url) > 1000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    n = _count(sqlite_url)
    assert n > 1000 and n % 100 == 0  # whole batches only, nothing committed was lost
    assert _ids(sqlite_url) == [f"req-{i:08d}" for i in range(n)]
    conn = sqlite3.connect(tmp_path / "ledger.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_start_fails_clearly_when_the_admission_journal_cannot_be_created(sqlite_url: str, tmp_path: Path) -> None:
    from tokenfuse.ledger.journal import AdmissionJournal

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the journal folder should be")
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(blocker / "journal", sqlite_url))
    with pytest.raises(LedgerStoreError, match=r"admission journal.*ledger\.journal_dir"):
        w.start()
