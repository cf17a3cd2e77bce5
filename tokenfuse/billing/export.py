"""The gateway ledger as a FOCUS-1.2-shaped dataset, so ``detect`` runs on app-side data too.

One row per hour x key x principal x workflow x session x model x token class.
A request's cost is split across its token classes in proportion to what the
price book says each class costs (tokens x rate), so the rows of a request add up
to exactly the ledger's cost; without a price the split is by tokens.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.ledgerdb import open_ledger
from tokenfuse.usage import TOKEN_CLASSES

_SUFFIX = {
    "input_uncached": "input-tokens",
    "cache_read": "cache-read-input-token-count",
    "cache_write": "cache-write-input-token-count",
    "cache_write_1h": "cache-write-1h-input-token-count",
    "output": "output-tokens",
}
_PROVIDER = {
    "bedrock": ("AWS", "AmazonBedrock", "Amazon Bedrock"),
    "anthropic": ("Anthropic", "Anthropic", "Anthropic API"),
    "openai": ("OpenAI", "OpenAI", "OpenAI API"),
}
_Q = Decimal("0.000000000001")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("BilledCost", "DECIMAL(28,12)"),
    ("EffectiveCost", "DECIMAL(28,12)"),
    ("ListCost", "DECIMAL(28,12)"),
    ("BillingAccountId", "VARCHAR"),
    ("BillingCurrency", "VARCHAR"),
    ("BillingPeriodStart", "TIMESTAMP"),
    ("BillingPeriodEnd", "TIMESTAMP"),
    ("ChargeCategory", "VARCHAR"),
    ("ChargeFrequency", "VARCHAR"),
    ("ChargeDescription", "VARCHAR"),
    ("ChargePeriodStart", "TIMESTAMP"),
    ("ChargePeriodEnd", "TIMESTAMP"),
    ("ConsumedQuantity", "DECIMAL(28,0)"),
    ("ConsumedUnit", "VARCHAR"),
    ("PricingQuantity", "DECIMAL(28,0)"),
    ("PricingUnit", "VARCHAR"),
    ("ProviderName", "VARCHAR"),
    ("PublisherName", "VARCHAR"),
    ("InvoiceIssuerName", "VARCHAR"),
    ("ServiceCategory", "VARCHAR"),
    ("ServiceSubcategory", "VARCHAR"),
    ("ServiceName", "VARCHAR"),
    ("SkuMeter", "VARCHAR"),
    ("SubAccountId", "VARCHAR"),
    ("x_ServiceCode", "VARCHAR"),
    ("x_Operation", "VARCHAR"),
    ("x_Model", "VARCHAR"),
    ("x_TokenClass", "VARCHAR"),
    ("x_Principal", "VARCHAR"),
    ("x_Workflow", "VARCHAR"),
    ("x_Session", "VARCHAR"),
    ("x_Requests", "BIGINT"),
)


def store_url(config_path: str) -> str:
    try:
        from tokenfuse.config import ConfigError, load_config
    except ImportError:  # the config module is optional for this command
        raise BillingInputError("--config: tokenfuse.config is unavailable; pass --store URL instead") from None
    try:
        return str(load_config(config_path, secrets=False).store)
    except ConfigError as e:
        raise BillingInputError(str(e).splitlines()[0]) from e


def _weights(model: str, tokens: dict[str, int], book: Any) -> dict[str, Decimal]:
    price = None
    if book is not None:
        try:
            price = book.lookup(model)
        except Exception:  # an unpriceable model falls back to a split by tokens
            price = None
    out = {}
    for cls, n in tokens.items():
        rate = Decimal(1)
        if price is not None:
            try:
                rate = Decimal(price.rate(cls))
            except (KeyError, TypeError):
                rate = Decimal(1)
        out[cls] = Decimal(n) * rate
    return out


# Output formats by file name ending; the format is never guessed from anything else.
FORMATS: dict[str, str] = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv.gz"}


def output_format(out: str, requested: str | None = None) -> str:
    """The format ``out``'s extension names; refuse an unknown extension or one that contradicts ``requested``."""
    name = out.lower()
    by_ext = next((fmt for ext, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])) if name.endswith(ext)), None)
    if by_ext is None:
        if requested is not None and "." not in Path(out).name:
            return requested
        raise BillingInputError(
            f"{out}: cannot tell the format from the extension; name the file .parquet, .csv or .csv.gz "
            "(FOCUS exports are tabular: there is no JSON form)"
        )
    if requested is not None and requested != by_ext:
        raise BillingInputError(
            f"--format {requested} but {out} ends in {by_ext!r}; rename the file or drop --format"
        )
    return by_ext


def _ledger_rows(url: str, since: float | None = None, until: float | None = None) -> Iterator[tuple[Any, ...]]:
    conn, dialect = open_ledger(url, "store", "check the config's store: key")
    cols = "ts, key_name, principal, workflow, session, protocol, model, route, " + ", ".join(TOKEN_CLASSES) + ", cost_usd"
    p = "?" if dialect == "sqlite" else "%s"
    where, params = "outcome = 'ok'", []
    if since is not None:
        where += f" AND ts >= {p}"
        params.append(since)
    if until is not None:
        where += f" AND ts < {p}"
        params.append(until)
    try:
        yield from conn.execute(f"SELECT {cols} FROM requests WHERE {where}", params)
    finally:
        conn.close()


def export_focus(
    url: str, out: str, *, fmt: str | None = None, since: float | None = None, until: float | None = None
) -> int:
    """Write the ledger's billed rows with ``since <= ts < until`` as FOCUS 1.2 rows, in the
    format ``out``'s extension names (:func:`output_format`). Returns the row count."""
    fmt = output_format(out, fmt)
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [defaultdict(int), Decimal(0), 0])
    for ts, key, principal, workflow, session, protocol, model, route, *rest in _ledger_rows(url, since, until):
        tokens = dict(zip(TOKEN_CLASSES, (int(n or 0) for n in rest[:-1]), strict=True))
        hour = int(float(ts)) // 3600 * 3600
        g = groups[(hour, key, principal, workflow, session, protocol or "", model or "", route or "")]
        for cls, n in tokens.items():
            g[0][cls] += n
        g[1] += Decimal(str(rest[-1] or 0))
        g[2] += 1
    try:
        from tokenfuse.pricing import PriceBook

        book: Any = PriceBook.default()
    except Exception:  # pricing is optional: the split falls back to tokens
        book = None
    n_rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "focus.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            for (hour, key, principal, workflow, session, protocol, model, route), (tokens, cost, reqs) in sorted(
                groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])
            ):
                used = {c: n for c, n in tokens.items() if n > 0}
                if not used:
                    continue
                weights = _weights(model, used, book)
                total_w = sum(weights.values(), Decimal(0)) or Decimal(1)
                start = datetime.fromtimestamp(hour, UTC).replace(tzinfo=None)
                period_start = start.replace(day=1, hour=0)
                period_end = (period_start + timedelta(days=32)).replace(day=1)
                provider, code, name = _PROVIDER.get(protocol, (protocol or "unknown", protocol or "unknown", protocol))
                remaining = cost
                classes = list(used)
                for i, cls in enumerate(classes):
                    share = remaining if i == len(classes) - 1 else (cost * weights[cls] / total_w).quantize(_Q)
                    remaining -= share
                    w.writerow([
                        share, share, share, "tokenfuse", "USD", period_start, period_end, "Usage", "Usage-Based",
                        f"{model} {cls} tokens via tokenfuse", start, start + timedelta(hours=1), used[cls], "Tokens",
                        used[cls], "Tokens", provider, provider, provider, "AI and Machine Learning", "AI Platforms",
                        name, f"TF-{model}-{_SUFFIX[cls]}", key or "", code, route, model, cls, principal or "",
                        workflow or "", session or "", reqs,
                    ])
                    n_rows += 1
        if n_rows == 0:
            when = " in that time range" if since is not None or until is not None else ""
            raise BillingInputError(f"store: the ledger has no billed (outcome 'ok') requests{when} to export")
        types = ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS)
        con = duckdb.connect(":memory:")
        src = f"read_csv('{path}', header=false, columns={{{types}}}, nullstr='')"
        target = out.replace("'", "''")
        options = {
            "csv": "FORMAT CSV, HEADER", "csv.gz": "FORMAT CSV, HEADER, COMPRESSION GZIP", "parquet": "FORMAT PARQUET"
        }[fmt]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT * FROM {src}) TO '{target}' ({options})")
        con.close()
    return n_rows


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tokenfuse export", description="Write the gateway ledger as a FOCUS 1.2 dataset.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="tokenfuse config; its store: key names the ledger")
    src.add_argument("--store", metavar="URL", help="ledger URL (instead of --config)")
    p.add_argument("--focus", required=True, metavar="OUT",
                   help="output file; its extension picks the format: .parquet, .csv or .csv.gz")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())),
                   help="must agree with OUT's extension (needed only for a name without one)")
    p.add_argument("--since", help="start (inclusive): ISO date/datetime (UTC) or a duration back from now, e.g. 7d")
    p.add_argument("--until", help="end (exclusive), same forms as --since")
    args = p.parse_args(argv)
    from tokenfuse.ledger.cli import parse_time

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise BillingInputError(str(exc)) from None
    fmt = output_format(args.focus, args.format)  # before reading the ledger: a wrong name fails fast
    url = args.store or store_url(args.config)
    n = export_focus(url, args.focus, fmt=fmt, since=since, until=until)
    print(f"wrote {n:,} FOCUS 1.2 rows to {args.focus} ({fmt})")
    return 0
