from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.ledger.conftest import make_row
from tokenfuse.config import parse_config
from tokenfuse.ledger.journal import (
    INCOMPLETE,
    INCOMPLETE_REASON,
    AdmissionJournal,
    default_dir,
    encode_admit,
    encode_done,
    encode_header,
    incomplete_row,
    parse,
    store_identity,
)
from tokenfuse.ledger.query import rows, usage_totals
from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.schema import connect
from tokenfuse.ledger.writer import LedgerWriter, load_spill
from tokenfuse.limits.budgets import compile_budgets
from tokenfuse.limits.rebuild import ledger_seeds


def provisional(i: int, usd: str = "0.25", ts: float | None = None) -> LedgerRow:
    return incomplete_row(
        ts=time.time() if ts is None else ts, request_id=f"req-{i:08d}", key_name="alice-droid",
        principal="alice", workflow="droid", session="s1", protocol="openai", route="chat.completions",
        model="test-model", upstream="openai", bound_usd=Decimal(usd), bound_input=1000, bound_output=256,
    )


def dead_journal(folder: Path, url: str, admitted: list[int], done: list[int], name: str = "journal-1-dead.jsonl") -> Path:
    """A journal file as a killed process leaves it: nobody holds its lock."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    data = encode_header(store_identity(url), 1)
    data += b"".join(encode_admit(provisional(i)) for i in admitted)
    data += encode_done(f"req-{i:08d}" for i in done)
    path.write_bytes(data)
    return path


def stored(url: str) -> dict[str, str]:
    conn = connect(url)
    try:
        return dict(conn.execute("SELECT request_id, outcome FROM requests").fetchall())
    finally:
        conn.close()


def test_parse_replays_admissions_minus_done_and_skips_torn_lines(sqlite_url: str) -> None:
    data = encode_header("abc", 7)
    data += b"".join(encode_admit(provisional(i)) for i in range(5))
    data += encode_done(["req-00000001", "req-00000003"])
    data += b'["torn line'  # an OS crash cut the last write short
    p = parse(data)
    assert p.store == "abc"
    assert list(p.outstanding) == ["req-00000000", "req-00000002", "req-00000004"]
    assert p.skipped == 1
    row = p.outstanding["req-00000000"]
    assert (row.outcome, row.reason, row.estimated) == (INCOMPLETE, INCOMPLETE_REASON, True)
    assert row.cost_usd == Decimal("0.25") and (row.input_uncached, row.output) == (1000, 256)


def test_admit_and_done_write_one_line_each(tmp_path: Path, sqlite_url: str) -> None:
    j = AdmissionJournal(tmp_path / "j", sqlite_url)
    j.open()
    assert j.path is not None
    for i in range(3):
        j.admit(provisional(i))
    j.done(["req-00000000", "req-00000001", "never-admitted"])
    j.done(["refused-only"])  # nothing outstanding among them: no write at all
    lines = j.path.read_bytes().splitlines()
    assert len(lines) == 1 + 3 + 1
    assert j.outstanding == 1
    assert list(parse(j.path.read_bytes()).outstanding) == ["req-00000002"]
    j.close()
    assert j.path.exists()  # an outstanding entry keeps the file for the next start


def test_clean_close_deletes_the_file(tmp_path: Path, sqlite_url: str) -> None:
    j = AdmissionJournal(tmp_path / "j", sqlite_url)
    j.open()
    j.admit(provisional(0))
    j.done(["req-00000000"])
    j.close()
    assert j.path is not None and not j.path.exists()


def test_recover_inserts_outstanding_entries_of_a_dead_process(tmp_path: Path, store_url: str) -> None:
    folder = tmp_path / "j"
    dead = dead_journal(folder, store_url, admitted=[0, 1, 2, 3], done=[1])
    w = LedgerWriter(store_url, journal=AdmissionJournal(folder, store_url))
    w.start()
    w.close()
    assert w.recovered == 3
    assert stored(store_url) == {f"req-{i:08d}": INCOMPLETE for i in (0, 2, 3)}
    assert not dead.exists()
    totals = usage_totals(store_url)
    assert totals["incomplete"] == 3 and totals["requests"] == 3
    assert totals["cost_usd"] == "0.750000"
    assert totals["by_model"]["test-model"]["incomplete"] == 3


def test_crash_between_commit_and_done_marker_does_not_double_count(tmp_path: Path, store_url: str) -> None:
    folder = tmp_path / "j"
    # req 0's final row was committed, then the process died before its done-marker.
    w = LedgerWriter(store_url)
    w.start()
    w.write(make_row(0, ts=time.time()))
    w.close()
    dead_journal(folder, store_url, admitted=[0, 1], done=[])
    w = LedgerWriter(store_url, journal=AdmissionJournal(folder, store_url))
    w.start()
    w.close()
    assert w.recovered == 1
    assert stored(store_url) == {"req-00000000": "ok", "req-00000001": INCOMPLETE}
    # Recovery interrupted after its commit but before deleting the file: running again adds nothing.
    dead_journal(folder, store_url, admitted=[0, 1], done=[])
    w = LedgerWriter(store_url, journal=AdmissionJournal(folder, store_url))
    w.start()
    w.close()
    assert w.recovered == 0
    assert len(rows(store_url)) == 2


def test_a_live_journal_is_never_taken_over(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    live = AdmissionJournal(folder, sqlite_url)
    live.open()  # its flock is held by an open file description, as in another process
    live.admit(provisional(5))
    other = AdmissionJournal(folder, sqlite_url)
    other.open()
    assert other.recover(connect(sqlite_url), "sqlite") == 0
    assert live.path is not None and live.path.exists()
    assert stored(sqlite_url) == {}
    live.close()
    other.close()


def test_a_journal_of_another_store_is_left_alone(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    foreign = dead_journal(folder, "sqlite:///" + str(tmp_path / "other.db"), admitted=[0], done=[])
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(folder, sqlite_url))
    w.start()
    w.close()
    assert w.recovered == 0 and foreign.exists() and stored(sqlite_url) == {}


def test_compaction_keeps_only_outstanding_entries(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    j = AdmissionJournal(folder, sqlite_url, max_bytes=4096)
    j.open()
    assert j.path is not None
    for i in range(200):
        j.admit(provisional(i))
        if i % 10 != 0:
            j.done([f"req-{i:08d}"])
    assert j.compactions > 0
    assert j.path.stat().st_size < 4096 + 2000
    assert set(parse(j.path.read_bytes()).outstanding) == {f"req-{i:08d}" for i in range(0, 200, 10)}
    assert [p.name for p in folder.iterdir()] == [j.path.name]
    # The compacted file is still locked: nobody can take it over.
    other = AdmissionJournal(folder, sqlite_url)
    assert other.recover(connect(sqlite_url), "sqlite") == 0
    j.close()
    assert other.recover(connect(sqlite_url), "sqlite") == 20


def test_an_interrupted_compaction_leaves_a_tmp_file_that_is_discarded(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    dead_journal(folder, sqlite_url, admitted=[0, 1], done=[])
    tmp = dead_journal(folder, sqlite_url, admitted=[1], done=[], name="journal-1-dead.tmp")
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(folder, sqlite_url))
    w.start()
    w.close()
    assert w.recovered == 2 and not tmp.exists()


def test_writer_marks_committed_requests_done_once_per_batch(tmp_path: Path, sqlite_url: str) -> None:
    j = AdmissionJournal(tmp_path / "j", sqlite_url)
    w = LedgerWriter(sqlite_url, batch_interval_ms=600_000, batch_size=10, journal=j)
    w.start()
    try:
        for i in range(25):
            j.admit(provisional(i))
        for i in range(25):
            w.write(make_row(i))
        assert w.flush()
        assert j.outstanding == 0
        assert j.path is not None
        done_lines = [line for line in j.path.read_bytes().splitlines() if line.startswith(b'{"done"')]
        assert len(done_lines) == w.batches_committed == 3
    finally:
        w.close()


def test_recovered_rows_are_counted_by_the_rebuild_at_their_bound(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    dead_journal(folder, sqlite_url, admitted=[0, 1], done=[])
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(folder, sqlite_url))
    w.start()
    w.close()
    cfg = parse_config("budgets: [{name: day, window: day, limit: {usd: 10}}]", "t.yaml")
    (seed,) = ledger_seeds(sqlite_url, compile_budgets(cfg.budgets, "config"), time.time(), None)
    (vec,) = seed.buckets.values()
    # nano-dollars, requests, input_uncached, cache_read, cache_write, output, total
    assert vec == (500_000_000, 2, 2000, 0, 0, 512, 2512)


def test_a_zero_bound_incomplete_row_still_counts_a_request(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "j"
    folder.mkdir()
    row = incomplete_row(
        ts=time.time(), request_id="zero", key_name="k", principal=None, workflow=None, session=None,
        protocol="openai", route="chat.completions", model="free", upstream=None,
        bound_usd=Decimal(0), bound_input=0, bound_output=0,
    )
    (folder / "journal-9-x.jsonl").write_bytes(encode_header(store_identity(sqlite_url), 9) + encode_admit(row))
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(folder, sqlite_url))
    w.start()
    w.close()
    cfg = parse_config("budgets: [{name: n, window: day, limit: {requests: 10}}]", "t.yaml")
    (seed,) = ledger_seeds(sqlite_url, compile_budgets(cfg.budgets, "config"), time.time(), None)
    assert next(iter(seed.buckets.values()))[1] == 1


def test_load_spill_replaces_the_incomplete_rows_of_its_requests(tmp_path: Path, store_url: str) -> None:
    folder = tmp_path / "j"
    dead_journal(folder, store_url, admitted=[0, 1], done=[])
    w = LedgerWriter(store_url, journal=AdmissionJournal(folder, store_url))
    w.start()
    w.close()
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(encode_admit(make_row(0, ts=time.time())))  # the same columns a spill file holds
    assert load_spill(store_url, spill) == 1
    assert stored(store_url) == {"req-00000000": "ok", "req-00000001": INCOMPLETE}


def test_default_dir_sits_beside_sqlite_and_per_store_for_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_dir(f"sqlite:///{tmp_path}/l.db") == tmp_path / "l.db.journal"
    assert default_dir("sqlite://:memory:") is None
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    a = default_dir("postgresql://u:pw1@db:5432/a")
    assert a is not None and a.parent == tmp_path / "state" / "tokenfuse" / "journal"
    assert a == default_dir("postgresql://u:pw2@db:5432/a")  # a rotated password is the same store
    assert a != default_dir("postgresql://u@db:5432/b")


_CHILD = """
import os, signal, sys, time
from decimal import Decimal
from tokenfuse.ledger.journal import AdmissionJournal, incomplete_row
from tokenfuse.ledger.writer import LedgerWriter
from tests.ledger.conftest import make_row
url, folder = sys.argv[1], sys.argv[2]
j = AdmissionJournal(folder, url)
w = LedgerWriter(url, batch_interval_ms=600_000, batch_size=100_000, journal=j)
w.start()
for i in range(40):
    j.admit(incomplete_row(ts=time.time(), request_id=f"req-{i:08d}", key_name="k", principal=None,
        workflow=None, session=None, protocol="openai", route="chat.completions", model="test-model",
        upstream="openai", bound_usd=Decimal("0.01"), bound_input=10, bound_output=10))
for i in range(10):
    w.write(make_row(i, ts=time.time()))
assert w.flush()
for i in range(10, 25):
    w.write(make_row(i, ts=time.time()))  # finished, but not yet committed when the kill comes
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_with_requests_in_flight_then_restart(tmp_path: Path, sqlite_url: str) -> None:
    folder = tmp_path / "journal"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, sqlite_url, str(folder)], cwd=root, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root)}, timeout=60,
    )
    assert proc.returncode == -9 and "ready" in proc.stdout, proc.stderr
    assert len(stored(sqlite_url)) == 10
    w = LedgerWriter(sqlite_url, journal=AdmissionJournal(folder, sqlite_url))
    w.start()
    w.close()
    assert w.recovered == 30
    outcomes = stored(sqlite_url)
    assert [outcomes[f"req-{i:08d}"] for i in range(40)] == ["ok"] * 10 + [INCOMPLETE] * 30
    assert list(folder.iterdir()) == []
