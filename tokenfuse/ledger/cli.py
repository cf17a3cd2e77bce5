"""`tokenfuse usage`: ledger totals by model (or by principal, workflow, key, team or day), as a table, CSV or JSON.

Money is printed with the same number of decimals in every cell of a report:
six, or more when some amount needs more to stay exact.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenfuse.config import ConfigError, load_config, parse_duration
from tokenfuse.ledger.query import GROUP_COLUMNS, GROUPINGS, Filters, Group, usage_by, usage_totals
from tokenfuse.ledger.schema import SchemaError, redact

_COLUMNS = ("requests", "input_uncached", "cache_read", "cache_write", "output", "cost_usd")


def parse_time(text: str, now: float | None = None) -> float:
    """``2026-11-01`` / ``2026-11-01T12:00[:00][Z|+02:00]`` (naive means UTC), or a
    duration back from now such as ``90m``, ``24h``, ``7d``, ``2w``."""
    value = text.strip()
    try:
        return (time.time() if now is None else now) - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; use an ISO date or datetime in UTC (2026-11-01, 2026-11-01T12:00) "
            "or a duration back from now (90m, 24h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenfuse usage",
        description="Print ledger totals by model. Times are UTC; --since is inclusive, --until exclusive.",
    )
    p.add_argument("--config", required=True, help="the gateway's YAML config (its `store:` is read)")
    p.add_argument("--since", help="start: ISO date/datetime (UTC) or a duration back from now, e.g. 24h, 7d")
    p.add_argument("--until", help="end (exclusive), same forms as --since")
    p.add_argument("--principal", help="only this principal")
    p.add_argument("--workflow", help="only this workflow")
    p.add_argument("--session", help="only this session id")
    p.add_argument("--key", help="only this key name")
    p.add_argument("--team", help="only this team")
    p.add_argument(
        "--by", choices=tuple(GROUPINGS), help="group by this instead of by model (day: UTC calendar day)"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default=None, help="output format (default: table)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    return p


def money(values: list[Decimal]) -> list[str]:
    """Each amount exact and all with one number of decimals: six, or as many as the longest needs."""
    scale = 6
    for v in values:
        exponent = v.normalize().as_tuple().exponent
        if isinstance(exponent, int):
            scale = max(scale, -exponent)
    return [f"{v:.{scale}f}" for v in values]


def _grouped(by: str, groups: list[Group]) -> tuple[list[str], list[list[Any]], list[Any]]:
    """(header, rows, total row) for `--by`, rows ordered by spend (by date for `day`)."""
    if by != "day":
        groups = sorted(groups, key=lambda g: (-g.cost_usd, g.name))
    costs = money([g.cost_usd for g in groups] + [sum((g.cost_usd for g in groups), Decimal(0))])
    saved = money([g.cache_saved_usd for g in groups] + [sum((g.cache_saved_usd for g in groups), Decimal(0))])
    header = [by, *GROUP_COLUMNS, "cost_usd", "cache_saved_usd"]
    rows = [
        [g.name, *(getattr(g, c) for c in GROUP_COLUMNS), cost, s]
        for g, cost, s in zip(groups, costs, saved, strict=False)
    ]
    total = ["TOTAL", *(sum(getattr(g, c) for g in groups) for c in GROUP_COLUMNS), costs[-1], saved[-1]]
    return header, rows, total


def render_grouped(by: str, groups: list[Group], fmt: str) -> str:
    header, rows, total = _grouped(by, groups)
    if fmt == "json":
        keys = header
        doc = {
            "by": by,
            "groups": [dict(zip(keys, r, strict=True)) for r in rows],
            "total": dict(zip(keys[1:], total[1:], strict=True)),
        }
        return json.dumps(doc, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        w.writerow(total)
        return buf.getvalue().rstrip("\n")
    return _table([h.upper() for h in header], [[_cell(c) for c in r] for r in rows], [_cell(c) for c in total])


def _table(header: list[str], body: list[list[str]], total: list[str]) -> str:
    widths = [max(len(r[i]) for r in (header, *body, total)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body), rule, line(total)])


def render_table(totals: dict[str, Any]) -> str:
    header = ["MODEL", *(c.upper() for c in _COLUMNS)]
    models = sorted(totals["by_model"].items(), key=lambda kv: (-Decimal(kv[1]["cost_usd"]), kv[0]))
    costs = money([Decimal(m["cost_usd"]) for _, m in models] + [Decimal(totals["cost_usd"])])
    body = [
        [name, *(_cell(m[c]) for c in _COLUMNS if c != "cost_usd"), cost]
        for (name, m), cost in zip(models, costs, strict=False)
    ]
    sums = {c: sum(m[c] for m in totals["by_model"].values()) for c in _COLUMNS if c != "cost_usd"}
    total = ["TOTAL", *(_cell(sums[c]) for c in _COLUMNS if c != "cost_usd"), costs[-1]]
    out = [_table(header, body, total)]
    if totals.get("refused"):
        out.append(f"refused (not sent upstream): {totals['refused']:,}")
    if totals.get("incomplete"):
        out.append(f"incomplete (gateway stopped mid-request; charged at the bound): {totals['incomplete']:,}")
    return "\n".join(out)


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse usage: {exc}", file=sys.stderr)
        return 2
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        print(f"tokenfuse usage: {exc}", file=sys.stderr)
        return 2
    fmt = args.format or ("json" if args.json else "table")
    try:
        if args.by is not None:
            filters = Filters(since, until, args.principal, args.workflow, args.session, args.key, args.team)
            print(render_grouped(args.by, usage_by(cfg.store, args.by, filters), fmt))
            return 0
        totals = usage_totals(
            cfg.store,
            since=since,
            until=until,
            principal=args.principal,
            workflow=args.workflow,
            session=args.session,
            key=args.key,
            team=args.team,
        )
    except SchemaError as exc:
        print(f"tokenfuse usage: {cfg.source}: store: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError, ValueError) as exc:
        print(f"tokenfuse usage: cannot read the ledger {redact(cfg.store)}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # psycopg errors (imported lazily) land here; keep it to one line, no traceback.
        if type(exc).__module__.startswith("psycopg"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"tokenfuse usage: cannot read the ledger {redact(cfg.store)}: {first}", file=sys.stderr)
            return 1
        raise
    if fmt == "json":
        print(json.dumps(totals, indent=2))
    elif fmt == "csv":
        print(render_csv(totals))
    else:
        print(render_table(totals))
    return 0


def render_csv(totals: dict[str, Any]) -> str:
    models = sorted(totals["by_model"].items(), key=lambda kv: (-Decimal(kv[1]["cost_usd"]), kv[0]))
    costs = money([Decimal(m["cost_usd"]) for _, m in models])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", *_COLUMNS])
    for (name, m), cost in zip(models, costs, strict=True):
        w.writerow([name, *(m[c] for c in _COLUMNS if c != "cost_usd"), cost])
    return buf.getvalue().rstrip("\n")
