"""`tokenfuse detect | reconcile | export | billing-sample`: argv[0] is the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date
from pathlib import Path

from tokenfuse.billing.errors import BillingInputError


def _date(s: str) -> date:
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a date; use YYYY-MM-DD") from None


def _detect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenfuse detect", description="Find runaway AI inference (Bedrock, Azure OpenAI, Vertex AI, marketplace models), caching misses "
                                "and the budget to set, in FOCUS 1.0/1.2 or CUR 2.0 exports (CSV, gzip CSV, Parquet).")
    p.add_argument("export", nargs="*", help="export files or folders")
    p.add_argument("--as-of", type=_date, help="first day not analysed (default: the day after the last complete day)")
    p.add_argument("--json", action="store_true", help='print {"as_of": ..., "findings": [...]}')
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--escalation", action="store_true", help="print an escalation note per flagged account")
    p.add_argument("--print-sql", metavar="ENGINE", choices=("duckdb", "athena", "trino", "bigquery", "snowflake", "spark"),
                   help="print the checks as SQL for ENGINE (duckdb, athena, trino, bigquery, snowflake, spark) and exit")
    p.add_argument("--check", choices=("runaway", "caching", "budget", "reconcile", "all"), default="all",
                   help="which check --print-sql and --engine run (default all)")
    p.add_argument("--engine", choices=("duckdb", "spark"),
                   help="run the warehouse SQL on this engine over the export files (spark: a local session; "
                        "needs pyspark and Java) and print its findings as JSON")
    p.add_argument("--flavour", choices=("focus-1.0", "focus-1.2", "cur-2.0"), default="cur-2.0",
                   help="export flavour for --print-sql (default cur-2.0)")
    p.add_argument("--table", default="billing_export", help="table name for --print-sql")
    return p


def _detect(argv: Sequence[str]) -> int:
    args = _detect_parser().parse_args(argv)
    checks = ("runaway", "caching", "budget", "reconcile") if args.check == "all" else (args.check,)
    if args.print_sql:
        from datetime import datetime

        from tokenfuse.billing import warehouse

        as_of = args.as_of or datetime.now(UTC).date()
        for c in checks:
            print(warehouse.header(args.print_sql, c, args.flavour, as_of))
            print(warehouse.render(args.print_sql, c, args.flavour, args.table, as_of) + ";\n")
        return 0
    if not args.export:
        raise BillingInputError("name at least one export file or folder (or use --print-sql)")
    if args.engine:
        return _detect_engine(args.engine, args.export, args.as_of, checks)
    from tokenfuse.billing.detect import detect
    from tokenfuse.billing.escalation import note
    from tokenfuse.billing.load import load

    exp = load(args.export)
    det = detect(exp, args.as_of)
    for n in det.notes:
        print(f"tokenfuse detect: note: {n}", file=sys.stderr)
    if args.html:
        from tokenfuse.billing.report_html import render

        Path(args.html).write_text(render(det), encoding="utf-8")
    if args.json:
        from tokenfuse.billing.jsonout import dumps

        findings = det.findings_json()
        if args.escalation:
            notes = {r.account: note(r) for r in det.flagged}
            for f in findings:
                if f["kind"] == "runaway_inference":
                    f["escalation_note"] = notes[f["account"]]
        print(dumps({"as_of": det.as_of.isoformat(), "flavours": list(exp.flavours), "rows": exp.rows,
                     "analysable": det.nothing_to_analyse is None, "statement": det.nothing_to_analyse,
                     "services": exp.services, "notes": det.notes, "dropped_files": exp.dropped_files,
                     "findings": findings, "cache_health": [c.to_json() for c in det.cache]}))
        return 0
    print(_detect_text(det, exp.rows, exp.flavours))
    if args.escalation:
        for r in det.flagged:
            print()
            print(note(r))
    return 0


def _detect_engine(engine: str, export: list[str], as_of: date | None, checks: tuple[str, ...]) -> int:
    from tokenfuse.billing.jsonout import dumps
    from tokenfuse.billing.warehouse import run, summarise

    if as_of is None:
        # The same default as detect on files: the day after the last complete day.
        from tokenfuse.billing.detect import resolve_as_of
        from tokenfuse.billing.load import load

        as_of = resolve_as_of(load(export), None)
    found = run(engine, export, as_of, checks)
    print(dumps({"engine": engine, "as_of": as_of.isoformat(), "findings": summarise(found), "rows": found}))
    return 0


def _detect_text(det: object, rows: int, flavours: tuple[str, ...]) -> str:
    from tokenfuse.billing.detect import Detection

    assert isinstance(det, Detection)
    out = [f"{rows:,} rows ({', '.join(flavours)}), as of {det.as_of.isoformat()}", ""]
    if det.nothing_to_analyse:
        return "\n".join([*out, det.nothing_to_analyse[0].upper() + det.nothing_to_analyse[1:] + "."])
    out.append("Runaway inference (recent 3 days vs baseline days -30..-8, $0 for days without usage)")
    spending = [r for r in det.runaways if r.recent_avg > 0 or r.baseline_avg > 0]
    w = max([14, *(len(r.account) for r in spending)])
    hdr = f"  {'account':<{w}} {'recent/day':>11} {'baseline/day':>13} {'sigma':>9} {'ratio':>7} {'driver':<12} compute  flag"
    out.append(hdr)
    for r in spending:
        ratio = f"{r.spike_ratio:.1f}x" if r.spike_ratio is not None else "-"
        out.append(
            f"  {r.account:<{w}} {r.recent_avg:>11.2f} {r.baseline_avg:>13.2f} {r.baseline_stddev:>9.2f} {ratio:>7} "
            f"{r.driver if r.flagged else '':<12} {'flat' if r.compute_flat else 'moved':<8} {_flag(r) if r.flagged else ''}"
        )
    if len(spending) < len(det.runaways):
        out.append(f"  ({len(det.runaways) - len(spending)} account(s) without AI inference spend in the window not shown)")
    out += ["", "Caching health, last 30 days (tokens; USD)"]
    for st in det.cache[:20]:
        rr = st.read_ratio
        out.append(
            f"  {st.account:<14} {st.model_label[:28]:<28} uncached {st.tokens['input_uncached']:>16,.0f} "
            f"({st.usd['input_uncached']:>10,.2f})  read {st.tokens['cache_read']:>16,.0f} ({st.usd['cache_read']:>9,.2f})"
            f"  write {st.tokens['cache_write']:>14,.0f} ({st.usd['cache_write']:>9,.2f})"
            f"  read/uncached {'-' if rr is None else f'{rr:.2f}'}{'' if st.supports_caching else '  (no caching)'}"
        )
    if len(det.cache) > 20:
        out.append(f"  ... {len(det.cache) - 20} more account x model rows in --json")
    out += ["", "Cache misses (caching models whose reads are small against uncached input)"]
    if not det.cache_misses:
        out.append("  no cache misses found")
    for c in det.cache_misses:
        out.append(
            f"  {c.account:<14} {c.model_label:<28} uncached {c.uncached_input_tokens:>16,.0f}  read {c.cache_read_tokens:>16,.0f}"
            f"  wasted ~{c.wasted_usd:,.2f} USD"
        )
    out += ["", "Budget advice (AI-inference-only budget: 2x last month without flagged days, at most $100/day for dev/test)"]
    for b in det.budgets:
        left_out = (
            f"  (left out {len(b.excluded_days)} flagged day(s), {b.excluded_usd:,.2f} USD)" if b.excluded_days else ""
        )
        out.append(
            f"  {b.account:<14} {b.period:<22} spent {b.bedrock_spend_usd:>12,.2f}  budget {b.monthly_budget_usd:>12,.2f}/month"
            f"  dev/test {b.dev_test_monthly_budget_usd:>10,.2f}/month{left_out}"
        )
    return "\n".join(out)


def _flag(r: object) -> str:
    return "BILLING LAG (not a runaway; run reconcile)" if getattr(r, "driver", "") == "billing_lag" else "RUNAWAY"


def _sample(argv: Sequence[str]) -> int:
    from tokenfuse.billing.sample import INCIDENTS, generate

    p = argparse.ArgumentParser(prog="tokenfuse billing-sample", description="Write a synthetic billing export "
                                "with injected incidents (.csv, .csv.gz or .parquet by OUT's extension).")
    p.add_argument("out", metavar="OUT", nargs="?")
    p.add_argument("--flavour", choices=("focus-1.0", "focus-1.2", "cur-2.0"), default="focus-1.2")
    p.add_argument("--days", type=int, default=45)
    p.add_argument("--accounts", type=int, default=8)
    p.add_argument("--incident", nargs="+", action="extend", default=[], metavar="KIND",
                   help=f"one or more of: {', '.join(INCIDENTS)}")
    p.add_argument("--end", type=_date, default=date(2026, 9, 30), help="last day of the export")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ledger", metavar="STORE_URL", help="also write the gateway account's true traffic to this ledger")
    p.add_argument("--provider", choices=("aws", "azure", "gcp", "mixed"), default="aws",
                   help="whose FOCUS rows to write: Bedrock, Azure OpenAI, Vertex AI, or all three by account")
    args = p.parse_args(argv)
    # `--incident KIND... OUT`: the greedy list swallows OUT; take it back.
    if args.out is None and args.incident and args.incident[-1] not in INCIDENTS:
        args.out = args.incident.pop()
    if args.out is None:
        raise BillingInputError("name the output file OUT (.csv, .csv.gz or .parquet)")
    m = generate(args.out, args.flavour, args.days, args.accounts, args.incident, args.end, args.seed, args.ledger,
                 args.provider)
    print(f"wrote {m.rows:,} rows ({m.flavour}, {m.first_day}..{m.last_day}) to {args.out}")
    for acct, inc in m.accounts.items():
        print(f"  {acct}  {inc}")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print("tokenfuse billing: expected a command (detect, reconcile, export, billing-sample)", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "detect":
            return _detect(rest)
        if cmd == "billing-sample":
            return _sample(rest)
        if cmd == "reconcile":
            from tokenfuse.billing.reconcile import main as reconcile_main

            return reconcile_main(rest)
        if cmd == "export":
            from tokenfuse.billing.export import main as export_main

            return export_main(rest)
    except BillingInputError as e:
        print(f"tokenfuse {cmd}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except SystemExit as e:  # argparse has already printed the usage line and the error
        return e.code if isinstance(e.code, int) else 2
    print(f"tokenfuse billing: unknown command {cmd!r}", file=sys.stderr)
    return 2
