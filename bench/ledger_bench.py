"""How many rows per second the ledger writer commits, SQLite and PostgreSQL.

    python bench/ledger_bench.py [--rows 200000] [--store sqlite|postgresql|both]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--pg-method copy|executemany|both]

For each store: a fresh ledger, one producer thread calling ``write()`` as fast
as it can, then ``close()``. Reported: the cost of one ``write()`` call (what the
request path pays), and rows/s from the first write until the last row is
committed (what the writer thread sustains). PostgreSQL runs in a scratch
schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.writer import LedgerWriter


def _rows(n: int) -> list[LedgerRow]:
    now = time.time()
    return [
        LedgerRow(
            ts=now + i * 1e-6,
            request_id=f"bench-{i:09d}",
            key_name="alice-droid",
            principal="alice",
            workflow="droid",
            session=f"s{i % 97}",
            protocol="anthropic",
            route="messages",
            model="claude-sonnet-4-5",
            upstream="anthropic",
            status=200,
            input_uncached=1200 + i % 300,
            cache_read=40_000,
            cache_write=512,
            output=350,
            cost_usd=Decimal("0.0213735"),
            latency_ms=812.4,
            overhead_ms=0.31,
        )
        for i in range(n)
    ]


@contextmanager
def _pg_scratch(base: str) -> Iterator[str]:
    import psycopg

    schema = f"tf_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(base, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def run_once(
    url: str, rows: list[LedgerRow], batch_size: int, interval_ms: int, method: Literal["copy", "executemany"]
) -> tuple[float, float]:
    """(ns per write() call, committed rows per second)."""
    w = LedgerWriter(url, batch_interval_ms=interval_ms, batch_size=batch_size, pg_method=method)
    w.start()
    t0 = time.perf_counter()
    for r in rows:
        w.write(r)
    t1 = time.perf_counter()
    w.close(timeout=600)
    t2 = time.perf_counter()
    if w.rows_written != len(rows):
        raise SystemExit(f"lost rows: wrote {len(rows)}, committed {w.rows_written}")
    return (t1 - t0) / len(rows) * 1e9, len(rows) / (t2 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-method", choices=["copy", "executemany", "both"], default="both")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--interval-ms", type=int, default=200)
    args = ap.parse_args()
    rows = _rows(args.rows)
    cases: list[tuple[str, Literal["copy", "executemany"]]] = []
    if args.store in ("sqlite", "both"):
        cases.append(("sqlite", "executemany"))
    if args.store in ("postgresql", "both"):
        methods = ["copy", "executemany"] if args.pg_method == "both" else [args.pg_method]
        cases += [("postgresql", m) for m in methods]  # type: ignore[misc]
    print(
        f"rows={args.rows} batch_size={args.batch_size} interval_ms={args.interval_ms} repeat={args.repeat}"
    )
    print(f"{'store':<24} {'write() ns/call':>16} {'committed rows/s':>17}")
    for store, method in cases:
        ns: list[float] = []
        rps: list[float] = []
        for _ in range(args.repeat):
            if store == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    a, b = run_once(
                        f"sqlite:///{tmp}/bench.db", rows, args.batch_size, args.interval_ms, method
                    )
            else:
                with _pg_scratch(args.pg_url) as url:
                    a, b = run_once(url, rows, args.batch_size, args.interval_ms, method)
            ns.append(a)
            rps.append(b)
        label = store if store == "sqlite" else f"postgresql ({method})"
        print(f"{label:<24} {statistics.median(ns):>16,.0f} {statistics.median(rps):>17,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
