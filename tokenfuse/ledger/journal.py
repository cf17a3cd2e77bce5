"""The admission journal: a request the gateway forwards is on disk before it leaves.

Ledger rows are written when a request finishes. A process killed with
requests in flight (SIGKILL, the OOM killer) would leave no trace of them,
although the provider bills them; counters rebuilt from the ledger would forget
that spend. So, right after a reservation is granted and before the request is
forwarded, the gateway appends a provisional row to this journal: outcome
``incomplete``, charged at the reserved bound. When the request's final row is
committed to the store, the writer thread appends a done-marker (one write per
committed batch). At start-up, :meth:`AdmissionJournal.recover` turns every
entry of a dead process that is admitted but not done, and not already in the
store, into an ``incomplete`` ledger row, before counters are rebuilt.

One file per process, held with ``flock`` for the life of the process; the
kernel drops the lock when the process dies, however it dies, so "lock
acquirable" means "owner dead". Each entry is one ``write()`` on an
``O_APPEND`` descriptor: once it returns, the bytes are in the page cache and
survive the death of the process without ``fsync`` (not an OS crash or power
loss; docs/ledger.md).

File format, JSON lines: a header ``{"tokenfuse_journal": 1, "store": ...}``,
then admissions (a JSON array, the row's columns in order) and done-markers
(``{"done": [request ids]}``). A torn or unparsable line is skipped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; the stdlib encoder is the fallback
    orjson = None  # type: ignore[assignment]

from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.schema import COLUMN_NAMES, StoreURL, placeholder, redact

log = logging.getLogger("tokenfuse.ledger")

FORMAT_VERSION = 1
INCOMPLETE = "incomplete"
INCOMPLETE_REASON = "gateway stopped before the request finished; charged at its reserved bound"
PREFIX = "journal-"
SUFFIX = ".jsonl"
# Past this size the live file is rewritten with only its outstanding entries.
DEFAULT_MAX_BYTES = 8 << 20
# A final row is recorded after its admission; this much clock slack covers a
# small step backwards of the wall clock between the two.
CLOCK_SLACK_S = 600.0
_LOUD_EVERY_S = 30.0


def store_identity(url: str) -> str:
    """A short, password-free name for the store a journal belongs to, so a
    journal directory shared by mistake never feeds one ledger's entries into another."""
    store = StoreURL.parse(url)
    name = f"sqlite:{Path(store.target).resolve()}" if store.dialect == "sqlite" else redact(url)
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def default_dir(url: str) -> Path | None:
    """Beside an SQLite ledger (``ledger.db.journal/``); for PostgreSQL a per-store
    folder under ``$XDG_STATE_HOME/tokenfuse/journal`` (``~/.local/state``). None
    for an in-memory store, which does not outlive the process anyway."""
    store = StoreURL.parse(url)
    if store.dialect == "sqlite":
        if store.target == ":memory:":
            return None
        db = Path(store.target).resolve()
        return db.with_name(db.name + ".journal")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tokenfuse" / "journal" / store_identity(url)


def incomplete_row(
    *,
    ts: float,
    request_id: str,
    key_name: str | None,
    principal: str | None,
    workflow: str | None,
    session: str | None,
    protocol: str | None,
    route: str | None,
    model: str | None,
    upstream: str | None,
    bound_usd: Decimal,
    bound_input: int,
    bound_output: int,
    team: str | None = None,
    tags: str | None = None,
) -> LedgerRow:
    """The provisional row for an admitted request: what it is charged if the
    gateway dies before it finishes. Cost, request count, input, output and total
    tokens equal what its reservation held, so a rebuild counts exactly that."""
    return LedgerRow(
        ts=ts,
        request_id=request_id,
        key_name=key_name,
        principal=principal,
        workflow=workflow,
        session=session,
        protocol=protocol,
        route=route,
        model=model,
        upstream=upstream,
        status=None,
        input_uncached=bound_input,
        output=bound_output,
        cost_usd=bound_usd,
        estimated=True,
        outcome=INCOMPLETE,
        reason=INCOMPLETE_REASON,
        team=team,
        tags=tags,
    )


# -- pure encoding ---------------------------------------------------------------

# One encoder, built once: json.dumps with non-default arguments builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def encode_header(store_id: str, pid: int) -> bytes:
    return json.dumps({"tokenfuse_journal": FORMAT_VERSION, "store": store_id, "pid": pid}).encode() + b"\n"


def encode_admit(row: LedgerRow) -> bytes:
    # SQLite's column values are plain JSON types: exact decimal text for money, 0/1 for booleans.
    # One line per admitted request, on the request path: orjson writes it several times
    # faster; what it refuses (a lone surrogate in a name) goes to the stdlib, which escapes it.
    values = row.as_tuple("sqlite")
    if orjson is not None:
        try:
            return orjson.dumps(values) + b"\n"
        except TypeError:  # orjson.JSONEncodeError
            pass
    return _ENCODE(values).encode() + b"\n"


def encode_done(request_ids: Iterable[str]) -> bytes:
    return _ENCODE({"done": list(request_ids)}).encode() + b"\n"


@dataclass
class Parsed:
    store: str | None = None
    # Admitted and not done, in admission order.
    outstanding: dict[str, LedgerRow] = field(default_factory=dict)
    skipped: int = 0


def parse(data: bytes) -> Parsed:
    """Replay a journal file: admissions minus done-markers."""
    out = Parsed()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if isinstance(item, list):
                row = LedgerRow.from_tuple(item)
                out.outstanding[row.request_id] = row
            elif isinstance(item, dict) and "done" in item:
                for rid in item["done"]:
                    out.outstanding.pop(rid, None)
            elif isinstance(item, dict) and "tokenfuse_journal" in item:
                out.store = item.get("store")
            else:
                out.skipped += 1
        except (ValueError, TypeError, ArithmeticError):
            # A line cut short by an OS crash mid-write, or damaged on disk.
            out.skipped += 1
    return out


# -- the journal -----------------------------------------------------------------


class AdmissionJournal:
    """One process's journal file plus recovery of dead processes' files.

    ``admit`` runs on the event loop, ``done`` on the ledger writer thread; a lock
    keeps the in-memory outstanding set and file swaps consistent between them.
    """

    def __init__(self, directory: str | os.PathLike[str], store_url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.store_id = store_identity(store_url)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self.path: Path | None = None
        self._size = 0
        self._outstanding: dict[str, bytes] = {}
        self._last_loud = -_LOUD_EVERY_S
        self.compactions = 0

    @classmethod
    def for_store(
        cls, store_url: str, directory: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> AdmissionJournal | None:
        """The journal for a gateway on ``store_url``: ``directory`` or the default one."""
        folder = Path(directory) if directory is not None else default_dir(store_url)
        return None if folder is None else cls(folder, store_url, **kwargs)

    # -- the live file ----------------------------------------------------------

    def open(self) -> None:
        """Create and lock this process's journal file."""
        if self._fd >= 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}"
        self._fd, self._size = self._new_file(self.directory / name, [])
        self.path = self.directory / name

    def _new_file(self, path: Path, entries: list[bytes]) -> tuple[int, int]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            data = encode_header(self.store_id, os.getpid()) + b"".join(entries)
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, len(data)

    def admit(self, row: LedgerRow) -> None:
        """Record an admitted request before it is forwarded. One ``write()``; a
        failing disk is logged loudly, never turned into a failed request."""
        line = encode_admit(row)
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, line)
            except OSError as exc:
                self._loud("cannot append to the admission journal %s (%s); a crash now would forget "
                           "in-flight requests", self.path, exc.strerror)
                return
            self._size += len(line)
            self._outstanding[row.request_id] = line

    def done(self, request_ids: Iterable[str]) -> None:
        """Mark requests whose final rows are committed; called once per committed batch."""
        with self._lock:
            if self._fd < 0:
                return
            ids = [rid for rid in request_ids if rid in self._outstanding]
            if not ids:
                return
            line = encode_done(ids)
            try:
                os.write(self._fd, line)
            except OSError as exc:
                # Not marking done only over-charges after a crash; recovery skips ids already stored.
                self._loud("cannot mark requests done in the admission journal %s (%s)", self.path, exc.strerror)
                return
            self._size += len(line)
            for rid in ids:
                del self._outstanding[rid]
            if self._size > self._max_bytes:
                self._compact()

    def _compact(self) -> None:
        """Swap in a file holding only the outstanding entries (caller holds the lock).

        The new file is locked before it is renamed over the old path, so the path
        always names a locked file; a crash before the rename leaves a ``.tmp`` file
        that recovery deletes unread, since the old file still holds everything.
        """
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        try:
            fd, size = self._new_file(tmp, list(self._outstanding.values()))
        except OSError as exc:
            self._loud("cannot compact the admission journal %s (%s); it keeps growing", self.path, exc.strerror)
            return
        os.replace(tmp, self.path)
        old, self._fd, self._size = self._fd, fd, size
        os.close(old)
        self.compactions += 1

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def close(self) -> None:
        """Release the file: deleted when nothing is outstanding (a clean stop), else
        kept for the next start to recover (rows the store never took)."""
        with self._lock:
            if self._fd < 0:
                return
            if not self._outstanding and self.path is not None:
                self.path.unlink(missing_ok=True)
            elif self._outstanding:
                log.warning(
                    "ledger: %d admitted requests have no committed row; the next start charges them "
                    "at their bound from %s", len(self._outstanding), self.path,
                )
            os.close(self._fd)
            self._fd = -1

    def _loud(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_loud >= _LOUD_EVERY_S:
            self._last_loud = now
            log.error("ledger: " + msg, *args)

    # -- recovery ---------------------------------------------------------------

    def recover(self, conn: Any, dialect: str) -> int:
        """Write an ``incomplete`` row for every request a dead process admitted
        and never finished; return how many. Run before counters are rebuilt.

        Only files whose lock can be taken are touched (their owner is dead); they
        are deleted once their rows are committed. A crash in between is harmless:
        ids already in the store are never inserted twice.
        """
        if not self.directory.is_dir():
            return 0
        taken: list[tuple[int, Path]] = []
        rows: dict[str, LedgerRow] = {}
        try:
            for path in sorted(self.directory.iterdir()):
                if not path.name.startswith(PREFIX) or path == self.path:
                    continue
                fd = _take(path)
                if fd is None:
                    continue
                if path.suffix == ".tmp":
                    taken.append((fd, path))  # an interrupted compaction: the live file has it all
                    continue
                parsed = parse(_read_all(fd))
                if parsed.store is not None and parsed.store != self.store_id:
                    log.warning("ledger: %s belongs to another store; left alone", path)
                    os.close(fd)
                    continue
                if parsed.skipped:
                    log.warning("ledger: %d unreadable lines skipped in %s", parsed.skipped, path)
                rows.update(parsed.outstanding)
                taken.append((fd, path))
            missing = _not_stored(conn, dialect, rows)
            if missing:
                _insert(conn, dialect, missing)
                log.warning(
                    "ledger: %d requests in flight when a gateway process died were recorded as "
                    "'incomplete' and charged at their reserved bound ($%s)",
                    len(missing), sum((r.cost_usd for r in missing), Decimal(0)),
                )
            for _, path in taken:
                path.unlink(missing_ok=True)
            return len(missing)
        finally:
            for fd, _ in taken:
                os.close(fd)


def _take(path: Path) -> int | None:
    """An fd holding the lock of ``path``, or None while its owner lives (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # The owner may have renamed a compacted file over this path, or another
    # recoverer deleted it, after we opened it: then this inode is stale.
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _not_stored(conn: Any, dialect: str, rows: dict[str, LedgerRow]) -> list[LedgerRow]:
    if not rows:
        return []
    since = min(r.ts for r in rows.values()) - CLOCK_SLACK_S
    # One indexed range scan (requests_ts) instead of a lookup per id: there is no request_id index.
    cur = conn.execute(f"SELECT request_id FROM requests WHERE ts >= {placeholder(dialect)}", (since,))
    stored = {r[0] for r in cur.fetchall()}
    return [r for rid, r in rows.items() if rid not in stored]


def _insert(conn: Any, dialect: str, rows: list[LedgerRow]) -> None:
    sql = (
        f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) "
        f"VALUES ({', '.join([placeholder(dialect)] * len(COLUMN_NAMES))})"
    )
    values = [r.as_tuple(dialect) for r in rows]
    if dialect == "sqlite":
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, values)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(sql, values)
