"""The ledger writer: request code appends rows to a queue; one thread commits them.

Datasette's pattern: a single writer fed by a queue, so request handling never
waits on the database. Rows are committed in batches, one transaction per
batch, every ``batch_interval_ms`` or every ``batch_size`` rows, whichever comes
first. When the store is unavailable (PostgreSQL restarting, SQLite locked by
another process) the rows stay in memory, in order, and the batch is retried
with back-off; nothing is dropped. What a kill can lose is documented in
docs/ledger.md.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tokenfuse.ledger.journal import CLOCK_SLACK_S, INCOMPLETE, AdmissionJournal
from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.schema import COLUMN_NAMES, StoreURL, connect, placeholder, redact
from tokenfuse.ledger.store import close_quietly

log = logging.getLogger("tokenfuse.ledger")

_COLUMNS = ", ".join(COLUMN_NAMES)


class LedgerStoreError(RuntimeError):
    """The ledger store could not be opened; the message is safe to show (no password)."""


class LedgerWriter:
    def __init__(
        self,
        url: str,
        batch_interval_ms: int = 200,
        batch_size: int = 1000,
        *,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        sqlite_busy_timeout_ms: int = 5000,
        pending_warn_rows: int = 1_000_000,
        pg_method: Literal["copy", "executemany"] = "copy",
        spill_dir: str | os.PathLike[str] | None = None,
        journal: AdmissionJournal | None = None,
    ) -> None:
        if batch_interval_ms <= 0 or batch_size <= 0:
            raise ValueError("batch_interval_ms and batch_size must be positive")
        self._url = url
        self._store = StoreURL.parse(url)
        self._interval = batch_interval_ms / 1000
        self._batch_size = batch_size
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._busy_ms = sqlite_busy_timeout_ms
        self._next_warn = pending_warn_rows
        self._pg_method = pg_method
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        # Told which requests' final rows are committed; opened and recovered in start().
        self.journal = journal
        self.recovered = 0
        self._insert_sql = f"INSERT INTO requests ({_COLUMNS}) VALUES ({', '.join([placeholder(self._store.dialect)] * len(COLUMN_NAMES))})"

        self._queue: deque[LedgerRow] = deque()
        self._inflight: list[LedgerRow] = []
        self._lock = threading.Lock()  # guards _accepted and the append
        self._wake = threading.Event()
        self._done = threading.Condition()  # guards the counters below; notified after each commit
        self._accepted = 0
        self._written = 0
        # Rows done with: committed, or rejected by the store and set aside.
        self._settled = 0
        self._rejected = 0
        self._errors = 0
        self._batches = 0
        self._flush_upto = 0
        self._stopping = False
        self._closed = False
        self._close_deadline = 0.0
        self._warned_after_close = False
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self.spilled_to: Path | None = None
        self.rejected_to: Path | None = None

    # -- the hot path -------------------------------------------------------

    def write(self, row: LedgerRow) -> None:
        """Queue one row. O(1); never touches the database, never raises on store trouble."""
        with self._lock:
            self._queue.append(row)
            self._accepted += 1
            n = len(self._queue)
        if n >= self._batch_size:
            self._wake.set()
        if n >= self._next_warn:
            self._next_warn *= 2
            log.warning(
                "ledger: %d rows are waiting for the store %s and are held in memory; "
                "nothing is dropped, but memory grows until the store accepts writes again",
                n,
                redact(self._url),
            )
        if self._closed and not self._warned_after_close:
            self._warned_after_close = True
            log.error(
                "ledger: a row was written after close(); it will not be committed (close the writer last)"
            )

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Open the store (creating or migrating the schema) and start the writer thread."""
        if self._thread is not None:
            return
        self._conn = self._open()
        if self.journal is not None:
            try:
                self._recover(self.journal)
            except BaseException:
                self.journal.close()
                self._disconnect()
                raise
        self._thread = threading.Thread(target=self._run, name="tokenfuse-ledger-writer", daemon=True)
        self._thread.start()
        # A safety net for a process that exits without calling close().
        atexit.register(self.close)

    def _recover(self, journal: AdmissionJournal) -> None:
        # Before the thread starts and before anyone rebuilds counters from the
        # store: requests a dead process forwarded must be in the ledger first.
        try:
            journal.open()
            self.recovered = journal.recover(self._conn, self._store.dialect)
        except OSError as exc:
            raise LedgerStoreError(
                f"cannot use the admission journal in {journal.directory} ({exc.strerror or exc}); "
                "make the folder writable or set ledger.journal_dir"
            ) from None
        except Exception as exc:
            if isinstance(exc, LedgerStoreError):
                raise
            raise LedgerStoreError(
                f"cannot record the requests left in flight by a dead gateway in {redact(self._url)}: "
                f"{self._scrub(_first_line(exc))}"
            ) from None

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every row written before this call is committed; False on timeout."""
        with self._lock:
            target = self._accepted
        deadline = time.monotonic() + timeout
        with self._done:
            if self._settled >= target:
                return True
            self._flush_upto = max(self._flush_upto, target)
        self._wake.set()
        with self._done:
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._settled >= target
                self._done.wait(min(remaining, 0.5))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued and stop the thread.

        If the store stays unavailable for ``timeout`` seconds, the rows still
        held are written to a JSON-lines spill file (see :func:`load_spill`) and
        its path is logged, rather than being lost when the process exits.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        thread = self._thread
        if thread is None:
            if self._queue:
                self.spilled_to = self._save(list(self._queue), "unsaved")
                self._queue.clear()
            return
        self._close_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        # Grace beyond the deadline for a commit that is already under way.
        thread.join(timeout + max(5.0, self._busy_ms / 1000 + 1))
        if thread.is_alive():
            log.error(
                "ledger: the writer did not finish within %.0fs; %d rows are not committed",
                timeout,
                self.pending,
            )
        if self.journal is not None:
            self.journal.close()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight)

    @property
    def rows_written(self) -> int:
        return self._written

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def batches_committed(self) -> int:
        return self._batches

    @property
    def rows_rejected(self) -> int:
        """Rows the store refused as invalid (not an outage); kept in a JSON-lines file, see docs/ledger.md."""
        return self._rejected

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self._interval
        try:
            while True:
                stopping = self._stopping
                now = time.monotonic()
                if not stopping and self._flush_upto <= self._settled and len(self._queue) < self._batch_size:
                    self._wake.wait(max(0.0, deadline - now))
                self._wake.clear()
                now = time.monotonic()
                everything = stopping or now >= deadline or self._flush_upto > self._settled
                if everything:
                    deadline = now + self._interval
                if self._drain(everything):
                    if stopping and not self._queue:
                        return
                    continue
                if stopping and time.monotonic() >= self._close_deadline:
                    self.spilled_to = (
                        self._save([*self._inflight, *self._queue], "unsaved") or self.spilled_to
                    )
                    self._inflight = []
                    self._queue.clear()
                    return
        finally:
            self._disconnect()

    def _drain(self, everything: bool) -> bool:
        """Commit full batches (or everything); False after a failed commit and its back-off."""
        backoff = self._retry_initial
        failures = 0
        while True:
            if not self._inflight:
                n = len(self._queue)
                if n == 0 or (not everything and n < self._batch_size):
                    return True
                batch = [self._queue.popleft() for _ in range(min(n, self._batch_size))]
                self._inflight = batch
            try:
                try:
                    self._commit(self._inflight)
                except Exception as exc:
                    if not _is_data_error(exc):
                        raise
                    self._salvage(exc)
                    continue
            except Exception as exc:
                failures += 1
                self._errors += 1
                self._on_failure(exc, backoff)
                pause = backoff
                if self._stopping:
                    pause = min(pause, max(0.0, self._close_deadline - time.monotonic()))
                time.sleep(pause)
                backoff = min(backoff * 2, self._retry_max)
                if self._stopping and time.monotonic() >= self._close_deadline:
                    return False
                continue
            if failures:
                log.warning(
                    "ledger: the store %s accepts writes again after %d failed attempts",
                    redact(self._url),
                    failures,
                )
                failures = 0
                backoff = self._retry_initial
            if self.journal is not None:
                self.journal.done(r.request_id for r in self._inflight)
            with self._done:
                self._written += len(self._inflight)
                self._settled += len(self._inflight)
                self._batches += 1
                self._inflight = []
                self._done.notify_all()

    def _salvage(self, exc: Exception) -> None:
        """The store refused the batch's data, not the connection: one bad row must not
        hold back every row behind it. Commit rows one at a time and set aside the
        ones the store refuses, in a file, never silently."""
        log.error(
            "ledger: the store refused a batch of %d rows as invalid (%s: %s); retrying row by row",
            len(self._inflight),
            type(exc).__name__,
            self._scrub(_first_line(exc)),
        )
        while self._inflight:
            row = self._inflight[0]
            try:
                self._commit([row])
            except Exception as row_exc:
                if not _is_data_error(row_exc):
                    raise  # an outage after all: the caller retries what is left
                path = self._save([row], "rejected", append=True)
                self.rejected_to = path or self.rejected_to
                log.error(
                    "ledger: row %r refused by the store (%s: %s); saved to %s",
                    getattr(row, "request_id", None),
                    type(row_exc).__name__,
                    self._scrub(_first_line(row_exc)),
                    path,
                )
                committed = 0
            else:
                committed = 1
            if self.journal is not None:
                # A refused row is kept in its file, not left to be charged again at its bound.
                self.journal.done([row.request_id])
            with self._done:
                self._inflight.pop(0)
                self._written += committed
                self._batches += committed
                self._rejected += 1 - committed
                self._settled += 1
                self._done.notify_all()

    def _commit(self, batch: list[LedgerRow], supersede: bool = False) -> None:
        """One transaction; with ``supersede``, first delete the ``incomplete`` rows
        recovery wrote for these requests (their final rows, from a spill file, win)."""
        if self._conn is None:
            self._conn = self._open()
        deletes = _supersede_sql(batch, placeholder(self._store.dialect)) if supersede else []
        if self._store.dialect == "sqlite":
            conn: sqlite3.Connection = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in deletes:
                    conn.execute(sql, params)
                conn.executemany(self._insert_sql, [r.as_tuple("sqlite") for r in batch])
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            return
        with self._conn.transaction():
            with self._conn.cursor() as cur:
                for sql, params in deletes:
                    cur.execute(sql, params)
                if self._pg_method == "copy":
                    with cur.copy(f"COPY requests ({_COLUMNS}) FROM STDIN") as copy:
                        for r in batch:
                            copy.write_row(r.as_tuple("postgresql"))
                else:
                    cur.executemany(self._insert_sql, [r.as_tuple("postgresql") for r in batch])

    def _on_failure(self, exc: Exception, backoff: float) -> None:
        log.error(
            "ledger: cannot commit %d rows to %s (%s: %s); keeping %d rows in memory, retrying in %.1fs",
            len(self._inflight),
            redact(self._url),
            type(exc).__name__,
            self._scrub(_first_line(exc)),
            self.pending,
            backoff,
        )
        if self._store.dialect == "postgresql":
            # The connection may be dead (server restarted); open a fresh one next time.
            self._disconnect()

    def _open(self) -> Any:
        try:
            conn = connect(self._url)
        except Exception as exc:
            raise LedgerStoreError(
                f"cannot open the ledger store {redact(self._url)}: {self._scrub(str(exc).strip())}"
            ) from None
        if self._store.dialect == "sqlite":
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
        return conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)

    def _scrub(self, text: str) -> str:
        try:
            password = urlsplit(self._url).password
        except ValueError:
            password = None
        return text.replace(password, "***") if password else text

    def _save(self, rows: list[LedgerRow], kind: str, append: bool = False) -> Path | None:
        """Write rows the store did not take to a JSON-lines file; its path, or None."""
        if not rows:
            return None
        if self._spill_dir is not None:
            folder = self._spill_dir
        elif self._store.dialect == "sqlite" and self._store.target != ":memory:":
            folder = Path(self._store.target).resolve().parent
        else:
            folder = Path.cwd()
        stamp = "" if append else f"-{int(time.time())}"
        path = folder / f"tokenfuse-ledger-{kind}-{os.getpid()}{stamp}.jsonl"
        try:
            with path.open("a" if append else "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(_row_json(r), default=str) + "\n")
        except OSError as exc:
            log.critical(
                "ledger: %d rows could not be committed to %s nor saved to %s (%s); they are lost",
                len(rows),
                redact(self._url),
                path,
                exc.strerror,
            )
            return None
        if kind == "unsaved":
            log.critical(
                "ledger: the store %s stayed unavailable until shutdown; %d uncommitted rows were saved to %s "
                "(load them later with tokenfuse.ledger.writer.load_spill)",
                redact(self._url),
                len(rows),
                path,
            )
        return path


def _supersede_sql(batch: list[LedgerRow], p: str, chunk: int = 500) -> list[tuple[str, tuple[Any, ...]]]:
    # An incomplete row is stamped at admission, before its final row: the ts
    # bound keeps each DELETE on the ts index rather than the whole table.
    out: list[tuple[str, tuple[Any, ...]]] = []
    since = min(r.ts for r in batch) - CLOCK_SLACK_S if batch else 0.0
    for i in range(0, len(batch), chunk):
        ids = tuple(r.request_id for r in batch[i : i + chunk])
        sql = (
            f"DELETE FROM requests WHERE outcome = '{INCOMPLETE}' AND ts >= {p} "
            f"AND request_id IN ({', '.join([p] * len(ids))})"
        )
        out.append((sql, (since, *ids)))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _is_data_error(exc: BaseException) -> bool:
    """True when the store refused the rows themselves (a constraint, a value it cannot
    take), as opposed to being unreachable, locked or restarting."""
    if isinstance(
        exc,
        sqlite3.IntegrityError
        | sqlite3.InterfaceError
        | sqlite3.DataError
        | TypeError
        | ValueError
        | AttributeError,
    ):
        return True
    if type(exc).__module__.startswith("psycopg"):
        import psycopg

        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return True
        # Without an SQLSTATE it came from adapting a Python value client-side; with
        # one (a missing table, a revoked grant) it is the store's state, so retry.
        return isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None
    return False


def _row_json(row: LedgerRow) -> list[Any]:
    # Field by field rather than as_tuple(): a rejected row may hold a value of the wrong type.
    values: list[Any] = [getattr(row, name, None) for name in COLUMN_NAMES]
    return [str(v) if isinstance(v, Decimal) else int(v) if isinstance(v, bool) else v for v in values]


def load_spill(url: str, path: str | os.PathLike[str]) -> int:
    """Commit the rows of a spill file to the store in one transaction; return how many.

    A gateway started since may have recorded these requests as ``incomplete``
    from its admission journal; those provisional rows are replaced, not doubled."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(LedgerRow.from_tuple(json.loads(line)))
    writer = LedgerWriter(url, batch_size=max(1, len(rows)))
    writer._conn = writer._open()
    try:
        if rows:
            writer._commit(rows, supersede=True)
    finally:
        writer._disconnect()
    return len(rows)
