"""A progress line on stderr for DuckDB statements that run longer than a couple of seconds.

DuckDB's own bar writes to stdout, where it would corrupt ``--json``; this one
polls ``query_progress()`` from the calling thread while the statement runs in a
worker thread, and writes to stderr only when stderr is a terminal.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import duckdb

SHOW_AFTER_S = 2.0
_POLL_S = 0.25


def execute(con: duckdb.DuckDBPyConnection, sql: str, label: str, stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    if not out.isatty():
        con.execute(sql)
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            con.execute(sql)
        except BaseException as e:  # re-raised in the calling thread
            failure.append(e)

    worker = threading.Thread(target=run, name="tokenfuse-load", daemon=True)
    start = time.monotonic()
    worker.start()
    shown = False
    while worker.is_alive():
        worker.join(_POLL_S)
        elapsed = time.monotonic() - start
        if worker.is_alive() and elapsed >= SHOW_AFTER_S:
            pct = con.query_progress()
            if pct >= 0:
                filled = int(pct / 5)
                out.write(f"\r{label} [{'#' * filled}{'.' * (20 - filled)}] {pct:5.1f}%  {elapsed:4.0f}s")
                out.flush()
                shown = True
    if shown:
        out.write("\r" + " " * 60 + "\r")
        out.flush()
    if failure:
        raise failure[0]
