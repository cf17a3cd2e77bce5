"""What the admission journal costs the request path.

    python bench/journal_bench.py [--admits 100000] [--batch 1000] [--dir /tmp]

Measured on one thread, into a journal file in ``--dir`` (a local disk; the
default is the system temp folder): building the provisional row with
``incomplete_row`` and ``admit()`` (one ``O_APPEND`` ``write()``, no fsync) for
each request, then ``done()`` once per ``--batch`` requests as the ledger writer
thread does after each commit. Reported: microseconds per admit (median of five
runs), microseconds per done-marker batch, and how many compactions ran.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenfuse.ledger.journal import AdmissionJournal, incomplete_row


def run(folder: Path, admits: int, batch: int) -> tuple[float, float, float, int]:
    journal = AdmissionJournal(folder, f"sqlite:///{folder}/bench.db")
    journal.open()
    now = time.time()
    admit_s = 0.0
    row_s = 0.0
    done_s = 0.0
    ids: list[str] = []
    for i in range(admits):
        t0 = time.perf_counter()
        row = incomplete_row(
            ts=now, request_id=f"tf-0badc0de-{i}", key_name="alice-droid", principal="alice", workflow="droid",
            session=None, protocol="openai", route="chat.completions", model="gpt-4o-mini", upstream="openai",
            bound_usd=Decimal("0.001234500"), bound_input=4096, bound_output=1024,
        )
        t1 = time.perf_counter()
        journal.admit(row)
        t2 = time.perf_counter()
        row_s += t1 - t0
        admit_s += t2 - t1
        ids.append(row.request_id)
        if len(ids) == batch:
            t3 = time.perf_counter()
            journal.done(ids)
            done_s += time.perf_counter() - t3
            ids = []
    compactions = journal.compactions
    journal.done(ids)
    journal.close()
    return admit_s / admits * 1e6, row_s / admits * 1e6, done_s / max(1, admits // batch) * 1e6, compactions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--admits", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    results = []
    for _ in range(5):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            results.append(run(Path(tmp), args.admits, args.batch))
    admit = statistics.median(r[0] for r in results)
    row = statistics.median(r[1] for r in results)
    done = statistics.median(r[2] for r in results)
    print(f"admits per run: {args.admits}, done-marker every {args.batch} (5 runs, median)")
    print(f"admit():             {admit:.2f} us per request (encode + one write())")
    print(f"incomplete_row():    {row:.2f} us per request (building the row)")
    print(f"done():              {done:.1f} us per batch of {args.batch} ({done / args.batch:.3f} us per request)")
    print(f"compactions per run: {results[0][3]}")


if __name__ == "__main__":
    main()
