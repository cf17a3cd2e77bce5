"""Benchmark: `tokenfuse detect` against a plain DuckDB query of the same rule, same file, same run.

    python bench/detect_bench.py [--rows 10000000] [--format parquet csv csv.gz] [--dir /tmp/tf-bench] [--repeat 1]

Generates each export once (cached by name), then for each format times, in child
processes, (a) `tokenfuse detect --json` and (b) a hand-written DuckDB query of the
runaway rule (3-day mean against days -30..-8, $0 days, mean + 2 sigma) that reads the
same file, and prints a Markdown table: wall time, the child's peak RSS, CPU time (user +
system) and the ratios. On a shared machine compare the CPU ratio: wall times move with
other processes' load far more than CPU time does.

    python bench/detect_bench.py --rows 100000000 --format parquet --repeat 2   # 100 M rows (~5 min to generate)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROWS_PER_ACCOUNT_DAY = 169  # 4 token classes x 24 h + EC2, Lambda, CloudWatch x 24 h + one daily S3 row
DAYS = 60
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The plain query: what a FinOps engineer would write by hand for the same rule on a CUR 2.0 file.
PLAIN = r"""
import sys, duckdb
path, fmt = sys.argv[1], sys.argv[2]
con = duckdb.connect()
src = f"read_parquet('{path}')" if fmt == "parquet" else f"read_csv('{path}', nullstr='NULL')"
rows = con.execute(f'''
WITH r AS (
    SELECT CAST(line_item_usage_start_date AS DATE) AS day, line_item_usage_account_id AS account,
           line_item_unblended_cost AS cost, lower(line_item_usage_type) AS ut,
           lower(coalesce(product_servicecode, line_item_product_code)) AS svc
    FROM {src}
),
d AS (
    SELECT account, day,
           sum(CASE WHEN (svc = 'amazonbedrock' OR ut LIKE '%-mp:%')
                     AND regexp_matches(ut, 'input|output|cache') THEN cost ELSE 0 END) AS cost
    FROM r GROUP BY account, day
),
b AS (SELECT max(day) + 1 AS as_of FROM d),
cal AS (SELECT account, CAST(x AS DATE) AS day FROM (SELECT DISTINCT account FROM d),
        range((SELECT as_of FROM b) - 30, (SELECT as_of FROM b), INTERVAL 1 DAY) t(x)),
f AS (SELECT c.account, (SELECT as_of FROM b) - c.day AS back, coalesce(d.cost, 0) AS cost
      FROM cal c LEFT JOIN d USING (account, day)),
s AS (SELECT account, avg(cost) FILTER (WHERE back <= 3) AS recent, avg(cost) FILTER (WHERE back >= 8) AS mean,
             stddev_samp(cost) FILTER (WHERE back >= 8) AS sd FROM f GROUP BY account)
SELECT account FROM s WHERE mean > 1 AND recent > mean + 2 * greatest(sd, 0.1 * mean)
''').fetchall()
print(len(rows))
"""


def _export(rows: int, fmt: str, flavour: str, folder: str) -> Path:
    accounts = -(-rows // (ROWS_PER_ACCOUNT_DAY * DAYS))
    out = Path(folder) / f"export-{flavour}-{accounts}x{DAYS}.{fmt}"
    if not out.exists():
        from tokenfuse.billing.sample import generate

        t = time.perf_counter()
        # Written under a temporary name: an interrupted run must not leave a truncated "cached" export.
        part = out.with_name(out.name.replace(f".{fmt}", f".partial.{fmt}"))
        m = generate(
            str(part), flavour, days=DAYS, accounts=accounts,
            incidents=["runaway", "cache_miss", "noisy_batch", "compute_spike", "tiny_baseline", "missing_days"],
        )
        part.rename(out)
        print(f"generated {m.rows:,} rows in {time.perf_counter() - t:.1f}s -> {out} "
              f"({out.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
    return out


def _timed(argv: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS in GB (GNU time's max resident set), CPU seconds and stdout of one child."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    peak_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
    return wall, int(peak_kb) / 1024 / 1024, float(user) + float(system), proc.stdout


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--format", nargs="+", choices=("parquet", "csv", "csv.gz"), default=["parquet", "csv", "csv.gz"])
    p.add_argument("--flavour", default="cur-2.0")
    p.add_argument("--dir", default="/tmp/tf-bench")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    print(f"| export | `detect` wall, peak RSS, CPU | plain DuckDB wall, peak RSS, CPU | ratio (wall) | ratio (CPU) |"
          f"  ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    print("|---|---|---|---|---|")
    for fmt in args.format:
        out = _export(args.rows, fmt, args.flavour, args.dir)
        for _ in range(args.repeat):
            # Alternate so that neither side always runs on a warm page cache.
            pw, pm, pc, _o = _timed([sys.executable, "-c", PLAIN, str(out), fmt])
            dw, dm, dc, doc_text = _timed([sys.executable, "-m", "tokenfuse", "detect", str(out), "--json"])
            doc = json.loads(doc_text)
            size = out.stat().st_size / 1e9
            print(f"| {doc['rows'] / 1e6:.0f} M rows {fmt} ({size:.2f} GB) | {dw:.1f} s, {dm:.2f} GB, {dc:.1f} s | "
                  f"{pw:.1f} s, {pm:.2f} GB, {pc:.1f} s | {dw / pw:.2f} | {dc / pc:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
