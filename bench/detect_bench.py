"""Benchmark: `tokenfuse detect` on a 10-million-row export.

    python bench/detect_bench.py [--rows 10000000] [--format parquet|csv|csv.gz] [--dir /tmp/tf-bench]

Generates the export once (cached by name), then times `tokenfuse detect --json`
in a child process and reports wall time and the child's peak RSS
(resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS_PER_ACCOUNT_DAY = 169  # 4 token classes x 24 h + EC2, Lambda, CloudWatch x 24 h + one daily S3 row
DAYS = 60
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--format", choices=("parquet", "csv", "csv.gz"), default="parquet")
    p.add_argument("--flavour", default="cur-2.0")
    p.add_argument("--dir", default="/tmp/tf-bench")
    args = p.parse_args()
    accounts = -(-args.rows // (ROWS_PER_ACCOUNT_DAY * DAYS))
    out = Path(args.dir) / f"export-{args.flavour}-{accounts}x{DAYS}.{args.format}"
    if not out.exists():
        from tokenfuse.billing.sample import generate

        t = time.perf_counter()
        m = generate(
            str(out),
            args.flavour,
            days=DAYS,
            accounts=accounts,
            incidents=[
                "runaway",
                "cache_miss",
                "noisy_batch",
                "compute_spike",
                "tiny_baseline",
                "missing_days",
            ],
        )
        print(
            f"generated {m.rows:,} rows in {time.perf_counter() - t:.1f}s -> {out} ({out.stat().st_size / 1e6:.0f} MB)"
        )
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tokenfuse", "detect", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    doc = json.loads(proc.stdout)
    kinds: dict[str, int] = {}
    for f in doc["findings"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    print(
        json.dumps(
            {
                "file": str(out),
                "rows": doc["rows"],
                "wall_s": round(wall, 2),
                "peak_rss_mb": round(peak_mb),
                "findings": kinds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
