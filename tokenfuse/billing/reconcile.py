"""Compare the gateway ledger's tokens with the bill, day x model x token class.

The bill's quantities are turned into tokens through its own ``pricing_unit``
(``1K tokens`` -> x1000), never by assumption; the unit price is what the bill
charged per token (cost / tokens), so "expected" is the ledger's tokens at the
bill's own price. A consistent ratio between the two token counts is a unit error
(1000 -> raw tokens billed as 1K units); ledger usage on days the bill skips,
followed by a lump, is billing lag; billed models the ledger never saw are
unmetered usage.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.ledgerdb import open_ledger
from tokenfuse.billing.load import Export, load
from tokenfuse.billing.usagetypes import canonical_model

CLASSES: tuple[str, ...] = ("input_uncached", "cache_read", "cache_write", "output")
KNOWN_FACTORS: tuple[Decimal, ...] = (Decimal(1000), Decimal(1_000_000), Decimal("0.001"), Decimal("0.000001"))
FACTOR_TOLERANCE = Decimal("0.02")
CONSISTENT_SHARE = Decimal("0.8")
# Billed tokens above metered ones by more than this share are reported as unmetered.
UNMETERED_TOLERANCE = Decimal("0.05")
_ZERO = Decimal(0)
_MTOK = Decimal(1_000_000)


@dataclass(slots=True)
class Cell:
    ledger_tokens: int = 0
    billed_tokens: Decimal = _ZERO
    billed_quantity: Decimal = _ZERO
    billed_usd: Decimal = _ZERO
    units: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Reconciliation:
    first_day: date
    last_day: date
    cells: dict[tuple[str, str], dict[date, Cell]]  # (model, class) -> day -> cell
    labels: dict[str, str]
    findings: list[dict[str, Any]]
    ledger_days_after_bill: int


def read_ledger(url: str, protocol: str | None = "bedrock") -> dict[tuple[date, str, str], int]:
    """Ledger tokens by (day, canonical model, class) for billed ('ok') rows."""
    from tokenfuse.ledger.schema import placeholder

    conn, dialect = open_ledger(url, "--ledger", "point at the gateway's store")
    day_expr = "date(ts, 'unixepoch')" if dialect == "sqlite" else "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    where = "outcome = 'ok'"
    params: tuple[Any, ...] = ()
    if protocol:
        where += " AND protocol = " + placeholder(dialect)
        params = (protocol,)
    sql = (
        f"SELECT {day_expr} AS day, model, sum(input_uncached), sum(cache_read), sum(cache_write) + sum(cache_write_1h), "
        f"sum(output) FROM requests WHERE {where} GROUP BY 1, 2"
    )
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    out: dict[tuple[date, str, str], int] = defaultdict(int)
    for day, model, *tokens in rows:
        key = canonical_model(model) or str(model)
        d = date.fromisoformat(str(day))
        for cls, n in zip(CLASSES, tokens, strict=True):
            if n:
                out[(d, key, cls)] += int(n)
    return out


def _bill_cells(exp: Export, account: str | None) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    acct_sql, params = ("AND account = ?", [account]) if account else ("", [])
    rows = exp.con.execute(
        f"""
        SELECT day, model, any_value(model_label),
               CASE WHEN token_class = 'cache_write_1h' THEN 'cache_write' ELSE token_class END AS cls,
               sum(tokens), sum(quantity), sum(cost), list(DISTINCT unit)
        FROM bill WHERE kind = 'inference' AND is_usage AND model IS NOT NULL AND token_class IS NOT NULL {acct_sql}
        GROUP BY day, model, cls
        """,
        params,
    ).fetchall()
    labels = {r[1]: r[2] for r in rows}
    return rows, labels


def _day_factor(c: Cell) -> Decimal | None:
    """The known factor (1 included) billed / metered tokens is within tolerance of, on one day."""
    r = c.billed_tokens / c.ledger_tokens
    for f in (Decimal(1), *KNOWN_FACTORS):
        if abs(r / f - 1) <= FACTOR_TOLERANCE:
            return f
    return None


def segments(days: dict[date, Cell]) -> list[tuple[Decimal, list[date]]]:
    """Runs of consecutive metered-and-billed days at the same non-1 factor: where a unit error starts and stops.

    Days only one side has (a billing lag) neither break nor join a run.
    """
    out: list[tuple[Decimal, list[date]]] = []
    run_f: Decimal | None = None
    run: list[date] = []
    for d in sorted(d for d, c in days.items() if c.ledger_tokens > 0 and c.billed_tokens > 0):
        f = _day_factor(days[d])
        if f is not None and f != 1 and f == run_f:
            run.append(d)
            continue
        if run_f is not None:
            out.append((run_f, run))
        run_f, run = (f, [d]) if f is not None and f != 1 else (None, [])
    if run_f is not None:
        out.append((run_f, run))
    return out


def reconcile(exp: Export, ledger: dict[tuple[date, str, str], int], account: str | None = None) -> Reconciliation:
    rows, labels = _bill_cells(exp, account)
    if not rows:
        who = f" for account {account}" if account else ""
        raise BillingInputError(f"{', '.join(exp.files)}: no Bedrock token usage rows{who} to reconcile")
    first, last = exp.first_day, exp.last_day
    cells: dict[tuple[str, str], dict[date, Cell]] = defaultdict(lambda: defaultdict(Cell))
    for day, model, _label, cls, tokens, qty, cost, units in rows:
        c = cells[(model, cls)][day]
        c.billed_tokens += Decimal(tokens or 0)
        c.billed_quantity += Decimal(qty or 0)
        c.billed_usd += Decimal(cost or 0)
        c.units.update(u for u in units if u)
    after = 0
    for (day, model, cls), n in ledger.items():
        if day > last:
            after += 1
            continue
        if day < first:
            continue
        cells[(model, cls)][day].ledger_tokens += n
    findings: list[dict[str, Any]] = []
    findings += _unit_mismatches(cells, labels)
    # Per class and day, the factor a unit-mismatch run explains; those days are judged at that scale.
    factors: dict[tuple[str, str], dict[date, Decimal]] = defaultdict(dict)
    for f in findings:
        for d in f["mismatched_days"]:
            factors[(f["model"], f["token_class"])][date.fromisoformat(d)] = Decimal(f["factor"])
    findings += _lags(cells, factors)
    findings += _unmetered(cells, labels, factors)
    return Reconciliation(first, last, cells, labels, findings, after)


def _num(d: Decimal) -> Decimal:
    """Plain digits for JSON and Markdown: integral values without exponent or trailing zeros."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _unit_price(days: dict[date, Cell]) -> Decimal | None:
    tok = sum((c.billed_tokens for c in days.values()), _ZERO)
    usd = sum((c.billed_usd for c in days.values()), _ZERO)
    return usd / tok if tok > 0 else None


def _reference_price(model: str, label: str | None, cls: str, days: dict[date, Cell], bad: set[date]) -> tuple[Decimal | None, str]:
    """USD per token as normally billed: the bill's own price on its agreeing days, else the price book."""
    good = {d: c for d, c in days.items() if d not in bad and c.ledger_tokens > 0 and c.billed_tokens > 0
            and _day_factor(c) == 1}
    price = _unit_price(good)
    if price is not None:
        return price, "bill (agreeing days)"
    price = book_price(model, label, cls)
    return price, "price book" if price is not None else "none"


def _close(a: Decimal, b: Decimal) -> bool:
    return b > 0 and abs(a / b - 1) <= FACTOR_TOLERANCE


def _unit_mismatches(cells: dict[tuple[str, str], dict[date, Cell]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """A factor between billed and metered tokens, per run of days, told apart by what the dollars did.

    ``billing_error``: the cost follows the wrong quantity (the bill overcharges or
    undercharges by the factor). ``unit_label``: the cost matches the metered tokens at
    the usual price; only the quantity or its unit label is off, nothing to refund.
    """
    out = []
    for (model, cls), days in sorted(cells.items()):
        runs = segments(days)
        bad = {d for _, ds in runs for d in ds}
        billed_days = sorted(d for d, c in days.items() if c.billed_tokens > 0)
        for factor, run in runs:
            matching = {d: days[d] for d in run}
            ref, ref_source = _reference_price(model, labels.get(model), cls, days, bad)
            bill_price = _unit_price(matching) or _ZERO
            ledger_tokens = sum(c.ledger_tokens for c in matching.values())
            billed_usd = sum((c.billed_usd for c in matching.values()), _ZERO)
            units = sorted({u for c in matching.values() for u in c.units})
            at_ref = Decimal(ledger_tokens) * ref if ref is not None else None
            if at_ref is not None and _close(billed_usd, at_ref):
                error_type, expected, price = "unit_label", at_ref, ref or _ZERO
                why = (
                    f"the billed quantity is {_num(factor)}x the metered tokens but the dollars match them: "
                    f"a wrong quantity or unit label ({', '.join(units) or 'no unit'}), not an overcharge"
                )
            else:
                error_type = "billing_error" if at_ref is not None else "unknown"
                # "Expected" is the metered tokens at the bill's own price per billed token.
                price = bill_price
                expected = Decimal(ledger_tokens) * price
                if factor == 1000 and any("1k" in u.lower() or "1,000" in u for u in units):
                    why = "billed raw tokens as 1K units"
                elif factor == 1000:
                    why = "billed 1000x the tokens metered"
                elif factor < 1:
                    why = f"billed {1 / factor:.0f}x fewer tokens than metered (quantities entered in larger units)"
                else:
                    why = f"billed {factor:.0f}x the tokens metered"
            first, last = run[0], run[-1]
            later = [d for d in billed_days if d > last]
            out.append(
                {
                    "kind": "unit_mismatch",
                    "model": model,
                    "model_label": labels.get(model, model),
                    "token_class": cls,
                    "factor": _num(factor),
                    "error_type": error_type,
                    "explanation": why,
                    "pricing_units": units,
                    "days": len(matching),
                    "first_day": first.isoformat(),
                    "last_day": last.isoformat(),
                    # Change points: the first mismatched day after agreeing ones, and the first agreeing day after.
                    "started": first.isoformat() if any(d < first for d in billed_days) else None,
                    "stopped": later[0].isoformat() if later else None,
                    "mismatched_days": [d.isoformat() for d in run],
                    "ledger_tokens": ledger_tokens,
                    "billed_tokens": _num(sum((c.billed_tokens for c in matching.values()), _ZERO)),
                    "unit_price_per_mtok": (price * _MTOK).quantize(Decimal("0.000001")),
                    "reference_price_per_mtok": None if ref is None else (ref * _MTOK).quantize(Decimal("0.000001")),
                    "reference_price_source": ref_source,
                    "billed_usd": billed_usd.quantize(Decimal("0.000001")),
                    "expected_usd": expected.quantize(Decimal("0.000001")),
                    "overbilled_usd": (billed_usd - expected).quantize(Decimal("0.000001")),
                }
            )
    return out


def _lags(
    cells: dict[tuple[str, str], dict[date, Cell]], factors: dict[tuple[str, str], dict[date, Decimal]]
) -> list[dict[str, Any]]:
    by_model: dict[str, dict[date, tuple[int, Decimal]]] = defaultdict(dict)
    for (model, cls), days in cells.items():
        # Days already found mis-scaled are compared at their corrected scale.
        scale = factors.get((model, cls), {})
        for d, c in days.items():
            lt, bt = by_model[model].get(d, (0, _ZERO))
            by_model[model][d] = (lt + c.ledger_tokens, bt + c.billed_tokens / scale.get(d, Decimal(1)))
    out = []
    for model, per_day in sorted(by_model.items()):
        if not any(b > 0 for _, b in per_day.values()) or not any(lt > 0 for lt, _ in per_day.values()):
            continue
        run: list[date] = []
        for d in sorted(per_day):
            lt, bt = per_day[d]
            if lt > 0 and bt == 0:
                run.append(d)
                continue
            if run:
                # The lump: the day after the gap bills (about) the gap's tokens on top of its own.
                missing = sum(per_day[m][0] for m in run)
                excess = bt - lt
                lump = d if lt > 0 and excess > 0 and abs(excess / missing - 1) <= Decimal("0.25") else None
                out.append(_lag(model, run, missing, d if lump else None, excess if lump else _ZERO))
                run = []
        if run:
            out.append(_lag(model, run, sum(per_day[m][0] for m in run), None, _ZERO))
    return out


def _lag(model: str, run: list[date], missing: int, lump: date | None, excess: Decimal) -> dict[str, Any]:
    return {
        "kind": "billing_lag",
        "model": model,
        "days_missing_from_bill": [d.isoformat() for d in run],
        "ledger_tokens_on_missing_days": missing,
        "lump_day": lump.isoformat() if lump else None,
        "lump_excess_tokens": _num(excess) if lump else 0,
        "explanation": (
            f"usage on {len(run)} day(s) the bill does not show, billed in one lump on {lump.isoformat()}"
            if lump
            else f"usage on {len(run)} day(s) the bill does not show yet"
        ),
    }


def _unmetered(
    cells: dict[tuple[str, str], dict[date, Cell]],
    labels: dict[str, str],
    factors: dict[tuple[str, str], dict[date, Decimal]],
) -> list[dict[str, Any]]:
    out = _partly_unmetered(cells, labels, factors)
    models: dict[str, list[Cell]] = defaultdict(list)
    for (model, _cls), days in cells.items():
        models[model].extend(days.values())
    for model, cs in sorted(models.items()):
        if any(c.ledger_tokens for c in cs):
            continue
        tokens = sum((c.billed_tokens for c in cs), _ZERO)
        if tokens <= 0:
            continue
        out.append(
            {
                "kind": "unmetered_usage",
                "model": model,
                "model_label": labels.get(model, model),
                "billed_tokens": _num(tokens),
                "billed_usd": sum((c.billed_usd for c in cs), _ZERO).quantize(Decimal("0.000001")),
                "explanation": "the bill has usage of this model that never went through the gateway",
            }
        )
    return out


def _partly_unmetered(
    cells: dict[tuple[str, str], dict[date, Cell]],
    labels: dict[str, str],
    factors: dict[tuple[str, str], dict[date, Decimal]],
) -> list[dict[str, Any]]:
    """Classes the gateway did meter, but the bill shows more of over the whole period.

    Totals, not days, are compared so that a billing lag (missing days, then a lump)
    nets out; days already explained by a unit factor are left to that finding.
    """
    out = []
    for (model, cls), all_days in sorted(cells.items()):
        explained = factors.get((model, cls), {})
        days = {d: c for d, c in all_days.items() if d not in explained}
        lt = sum(c.ledger_tokens for c in days.values())
        bt = sum((c.billed_tokens for c in days.values()), _ZERO)
        if lt == 0 or bt <= lt * (1 + UNMETERED_TOLERANCE):
            continue
        price = _unit_price(days) or _ZERO
        out.append(
            {
                "kind": "unmetered_usage",
                "model": model,
                "model_label": labels.get(model, model),
                "token_class": cls,
                "ledger_tokens": lt,
                "billed_tokens": _num(bt),
                "unmetered_tokens": _num(bt - lt),
                "unmetered_usd": ((bt - lt) * price).quantize(Decimal("0.000001")),
                "billed_usd": sum((c.billed_usd for c in days.values()), _ZERO).quantize(Decimal("0.000001")),
                "explanation": f"the bill shows {(bt / lt - 1) * 100:.0f}% more {cls} tokens than the gateway metered: "
                "calls that bypassed the gateway",
            }
        )
    return out


def book_price(model: str, label: str | None, cls: str) -> Decimal | None:
    """USD per token from the price book, for classes the bill has no rows of."""
    try:
        from tokenfuse.pricing import PriceBook

        book = PriceBook.default()
    except Exception:  # the price book is a fallback; without it there is simply no price
        return None
    for name in (model.replace(".", "-"), label):
        if not name:
            continue
        price = book.lookup(name)
        if price is not None:
            return Decimal(price.rate(cls)) / _MTOK
    return None


def _price(rec: Reconciliation, model: str, cls: str) -> tuple[Decimal | None, str]:
    price = _unit_price(rec.cells[(model, cls)])
    if price is not None:
        return price, "bill"
    price = book_price(model, rec.labels.get(model), cls)
    return price, "price book" if price is not None else "none"


def summary(rec: Reconciliation) -> list[dict[str, Any]]:
    out = []
    for (model, cls), days in sorted(rec.cells.items()):
        lt = sum(c.ledger_tokens for c in days.values())
        bt = sum((c.billed_tokens for c in days.values()), _ZERO)
        usd = sum((c.billed_usd for c in days.values()), _ZERO)
        price, source = _price(rec, model, cls)
        out.append(
            {
                "model": model,
                "token_class": cls,
                "ledger_tokens": lt,
                "billed_tokens": _num(bt),
                "ratio": (bt / lt).quantize(Decimal("0.0001")) if lt else None,
                "billed_usd": usd.quantize(Decimal("0.000001")),
                "expected_usd": (Decimal(lt) * price).quantize(Decimal("0.000001")) if price is not None else None,
                "price_source": source,
            }
        )
    return out


def markdown(rec: Reconciliation, ledger_desc: str, bill_files: Sequence[str]) -> str:
    lines = [
        "# Billing reconciliation",
        "",
        f"- Ledger: {ledger_desc}",
        f"- Bill: {', '.join(bill_files)} ({rec.first_day.isoformat()} .. {rec.last_day.isoformat()})",
        f"- Generated: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "Tokens are counted per UTC day, model and token class. The bill's quantities are converted to tokens "
        "with its own pricing unit (for example `1K tokens` means 1,000 tokens per unit). The unit price is what "
        "the bill charged per million tokens; *expected* is the ledger's tokens at that price.",
        "",
        "## Findings",
        "",
    ]
    if not rec.findings:
        lines.append("The bill agrees with the ledger.")
    for f in rec.findings:
        if f["kind"] == "unit_mismatch" and f["error_type"] == "unit_label":
            lines += [
                f"### Unit label: {f['model_label']} {f['token_class']} quantity {f['factor']:f}x the metered tokens, "
                "dollars right",
                "",
                f"{f['explanation']}. Over {f['days']} day(s) ({f['first_day']} .. {f['last_day']}) the gateway metered "
                f"{f['ledger_tokens']:,} tokens; the bill shows {f['billed_tokens']:,} and charged ${f['billed_usd']:,}, "
                f"which is the metered tokens at the usual ${f['reference_price_per_mtok']} per million "
                f"({f['reference_price_source']}). Ask for the quantity to be corrected; no refund is due.",
                "",
            ]
        elif f["kind"] == "unit_mismatch":
            change = ""
            if f["started"] or f["stopped"]:
                change = (
                    f" It starts on {f['started'] or f['first_day']}"
                    + (f" and stops on {f['stopped']}" if f["stopped"] else " and runs to the end of the bill")
                    + "; the other days agree."
                )
            lines += [
                f"### Unit mismatch: {f['model_label']} {f['token_class']} billed at {f['factor']:f}x the metered tokens",
                "",
                f"{f['explanation']}.{change} Over {f['days']} day(s) ({f['first_day']} .. {f['last_day']}) the gateway metered "
                f"{f['ledger_tokens']:,} tokens; the bill shows {f['billed_tokens']:,} tokens "
                f"(pricing unit {', '.join(f['pricing_units']) or 'n/a'}). At the billed unit price of "
                f"${f['unit_price_per_mtok']} per million tokens the expected charge is ${f['expected_usd']:,}; "
                f"the bill charged ${f['billed_usd']:,}, ${f['overbilled_usd']:,} too much.",
                "",
            ]
        elif f["kind"] == "billing_lag":
            lines += [f"### Billing lag: {f['model']}", "", f"{f['explanation']}: {', '.join(f['days_missing_from_bill'])} "
                      f"({f['ledger_tokens_on_missing_days']:,} metered tokens).", ""]
        else:
            what = f"{f['model_label']} {f['token_class']}" if "token_class" in f else f["model_label"]
            amount = (
                f"{f['unmetered_tokens']:,} tokens beyond the {f['ledger_tokens']:,} metered, ${f['unmetered_usd']:,}"
                if "unmetered_tokens" in f
                else f"{f['billed_tokens']:,} tokens, ${f['billed_usd']:,}"
            )
            lines += [f"### Unmetered usage: {what}", "", f"{f['explanation']}: {amount}.", ""]
    if rec.ledger_days_after_bill:
        lines += [f"Ledger usage after {rec.last_day.isoformat()} is not compared: the bill does not reach it yet.", ""]
    lines += ["## Totals", "", "| model | class | metered tokens | billed tokens | ratio | expected USD | billed USD |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in summary(rec):
        lines.append(
            f"| {s['model']} | {s['token_class']} | {s['ledger_tokens']:,} | {s['billed_tokens']:,} | "
            f"{s['ratio'] if s['ratio'] is not None else '-'} | {s['expected_usd'] if s['expected_usd'] is not None else '-'} | "
            f"{s['billed_usd']} |"
        )
    flagged = {(f["model"], f.get("token_class")) for f in rec.findings}
    flagged_models = {m for m, _ in flagged}
    lines += ["", "## Day by day", ""]
    for (model, cls), days in sorted(rec.cells.items()):
        if (model, cls) not in flagged and model not in flagged_models:
            continue
        price = _price(rec, model, cls)[0] or _ZERO
        lines += [
            f"### {rec.labels.get(model, model)} ({model}), {cls}",
            "",
            "| day | metered tokens | billed quantity | unit | billed tokens | ratio | unit price $/Mtok | expected USD | billed USD |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for d in sorted(days):
            c = days[d]
            ratio = f"{c.billed_tokens / c.ledger_tokens:.4f}" if c.ledger_tokens else "-"
            lines.append(
                f"| {d.isoformat()} | {c.ledger_tokens:,} | {_num(c.billed_quantity):,} | {', '.join(sorted(c.units))} | "
                f"{_num(c.billed_tokens):,} | {ratio} | {(price * _MTOK).quantize(Decimal('0.0001'))} | "
                f"{(Decimal(c.ledger_tokens) * price).quantize(Decimal('0.01'))} | {c.billed_usd.quantize(Decimal('0.01'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tokenfuse reconcile", description="Compare the gateway ledger with the bill.")
    p.add_argument("--ledger", required=True, metavar="STORE_URL", help="sqlite:///path.db or postgresql://...")
    p.add_argument("--billing", required=True, nargs="+", metavar="EXPORT", help="export files or folders")
    p.add_argument("--account", help="only this usage account's bill rows (the account the gateway calls Bedrock from)")
    p.add_argument("--all-protocols", action="store_true", help="compare every ledger row, not only protocol=bedrock")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", metavar="FILE", help="write a Markdown report a support engineer can follow")
    args = p.parse_args(argv)
    exp = load(args.billing)
    for n in exp.notes:
        print(f"tokenfuse reconcile: note: {n}", file=sys.stderr)
    ledger = read_ledger(args.ledger, None if args.all_protocols else "bedrock")
    if not ledger:
        raise BillingInputError(f"--ledger: the ledger has no billed (outcome 'ok') {'' if args.all_protocols else 'Bedrock '}rows")
    if args.account is None:
        accounts = exp.con.execute("SELECT count(DISTINCT account) FROM bill WHERE kind = 'inference'").fetchone()
        if accounts and accounts[0] > 1:
            print(
                f"tokenfuse reconcile: note: the bill has Bedrock usage in {accounts[0]} accounts; "
                "pass --account with the one the gateway calls Bedrock from",
                file=sys.stderr,
            )
    rec = reconcile(exp, ledger, args.account)
    desc = args.ledger.split("@")[-1] if "@" in args.ledger else args.ledger
    if args.report:
        Path(args.report).write_text(markdown(rec, desc, exp.files), encoding="utf-8")
    if args.json:
        from tokenfuse.billing.jsonout import dumps

        print(dumps({"bill_first_day": rec.first_day.isoformat(), "bill_last_day": rec.last_day.isoformat(),
                     "findings": rec.findings, "summary": summary(rec)}))
    else:
        if not rec.findings:
            print("the bill agrees with the ledger")
        for f in rec.findings:
            span = f" from {f['first_day']} to {f['last_day']}" if f["kind"] == "unit_mismatch" else ""
            print(f"{f['kind']}: {f.get('model_label', f['model'])} {f.get('token_class', '')}{span} - {f['explanation']}"
                  + (f" (billed ${f['billed_usd']}, expected ${f['expected_usd']})" if f["kind"] == "unit_mismatch" else ""))
    return 0
