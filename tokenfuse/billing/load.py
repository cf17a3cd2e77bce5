"""Load FOCUS 1.0, FOCUS 1.2 and CUR 2.0 exports into DuckDB, one normalised shape.

The raw rows are never materialised: each file group is read by DuckDB's own
CSV/Parquet reader, normalised column by column and aggregated in the same pass
to one row per day x account x billing line. Everything downstream (detection,
reconciliation, HTML) works on that small table, which is what keeps a 10 million
row export inside seconds and a few hundred megabytes.

Quirks handled here: literal ``NULL`` strings, timestamps with or without ``T``/``Z``
or offsets (all normalised to naive UTC), hourly and daily rows side by side, and
values whose case varies between rows (service, charge category).
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from tokenfuse.billing import deliveries, progress
from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.usagetypes import classify, unit_multiplier

FLAVOURS: tuple[str, ...] = ("focus-1.0", "focus-1.2", "cur-2.0")

# The normalised usage model every flavour maps into, by name (never by position).
NORMALISED: tuple[str, ...] = (
    "ts", "cost", "account", "billing_account", "provider", "service", "usage_type", "operation", "charge",
    "quantity", "unit", "product", "currency",
)

# Normalised field -> candidate source columns, first present wins (matched
# case-insensitively). ``col['key']`` reads a key of a MAP column (or of a JSON
# object when the CSV writer serialised the map). A field whose candidates are all
# absent is NULL unless it is required.
_FOCUS_FIELDS: dict[str, tuple[str, ...]] = {
    "ts": ("ChargePeriodStart",),
    "cost": ("BilledCost",),
    "account": ("SubAccountId", "BillingAccountId"),
    "billing_account": ("BillingAccountId",),
    "provider": ("ProviderName", "x_Provider"),
    "service": ("x_ServiceCode", "ServiceName"),
    "operation": ("x_Operation",),
    "charge": ("ChargeCategory",),
    "quantity": ("PricingQuantity", "ConsumedQuantity"),
    "unit": ("PricingUnit", "ConsumedUnit"),
    "product": ("ServiceName", "ChargeDescription"),
    "currency": ("BillingCurrency",),
}
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    # The token meter: AWS puts its usage type in x_UsageType (1.0) and SkuMeter (1.2); Azure its
    # meter name in SkuMeter and x_SkuMeterName; Google Cloud its SKU description in SkuMeter or,
    # in 1.0 exports, only ChargeDescription.
    "focus-1.0": {**_FOCUS_FIELDS, "usage_type": ("x_UsageType", "x_SkuMeterName", "SkuMeter", "ChargeDescription")},
    "focus-1.2": {**_FOCUS_FIELDS, "usage_type": ("SkuMeter", "x_UsageType", "x_SkuMeterName", "ChargeDescription")},
    "cur-2.0": {
        "ts": ("line_item_usage_start_date",),
        "cost": ("line_item_unblended_cost",),
        "account": ("line_item_usage_account_id",),
        "billing_account": ("bill_payer_account_id",),
        "provider": (),
        "service": ("product_servicecode", "line_item_product_code"),
        "usage_type": ("line_item_usage_type",),
        "operation": ("line_item_operation",),
        "charge": ("line_item_line_item_type",),
        "quantity": ("line_item_usage_amount",),
        "unit": ("pricing_unit",),
        # CUR 2.0 keeps the product name in the ``product`` map; a Marketplace line's
        # product code is an opaque id (b3hzdk7mhh2vz0ywa7kjh0eyt), the last resort.
        "product": (
            "product['product_name']", "product_product_name", "product['servicename']", "line_item_product_code",
        ),
        "currency": ("line_item_currency_code",),
    },
}
# CUR is AWS by definition; FOCUS rows say so in ProviderName.
_CONSTANT_PROVIDER = {"cur-2.0": "aws"}
_MAP_KEY = re.compile(r"^(\w+)\['(\w+)'\]$")
REQUIRED: tuple[str, ...] = ("ts", "cost", "account", "service", "charge")
_MARKERS: dict[str, tuple[str, ...]] = {
    "cur-2.0": ("line_item_usage_type", "line_item_unblended_cost", "line_item_usage_start_date"),
    "focus-1.2": ("skumeter", "servicesubcategory", "invoiceid", "pricingcurrency"),
    "focus-1.0": ("chargeperiodstart", "billedcost", "chargecategory"),
}
_NUMERIC = "DECIMAL(38,12)"


@dataclass(frozen=True, slots=True)
class FileGroup:
    fmt: str  # csv | parquet
    flavour: str
    files: tuple[str, ...]
    columns: dict[str, str]  # lower-cased name -> name as the file spells it
    types: dict[str, str]  # lower-cased name -> DuckDB type


@dataclass(slots=True)
class Export:
    """A loaded export: the DuckDB connection holding table ``bill``, and its extent."""

    con: duckdb.DuckDBPyConnection
    flavours: tuple[str, ...]
    files: tuple[str, ...]
    rows: int
    first_day: date
    last_day: date
    last_ts: datetime
    last_day_complete: bool
    currency: str | None
    # The last day every account and service has complete (see docs/detection.md).
    last_complete_day: date | None = None
    notes: list[str] = field(default_factory=list)  # what was dropped or judged incomplete, and why
    dropped_files: list[str] = field(default_factory=list)
    services: dict[str, int] = field(default_factory=dict)  # service -> rows, for "nothing to analyse" answers


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET memory_limit='1200MB'")
    # Spill files go to the system temp folder, not a .tmp folder in the user's working directory.
    spill = os.path.join(tempfile.gettempdir(), f"tokenfuse-duckdb-{os.getpid()}")
    con.execute(f"SET temp_directory={_sql_str(spill)}")
    # Progress is tracked for tokenfuse.billing.progress; DuckDB's own bar would print to stdout.
    con.execute("SET enable_progress_bar=true")
    con.execute("SET enable_progress_bar_print=false")
    return con


def _present(cand: str, columns: dict[str, str]) -> bool:
    m = _MAP_KEY.match(cand)
    return (m.group(1).lower() if m else cand.lower()) in columns


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files named, plus every export file under a named folder."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                str(f)
                for f in path.rglob("*")
                if f.is_file() and not f.name.startswith(".") and _format_by_name(f.name) is not None
            )
            if not found:
                raise BillingInputError(f"{p}: folder holds no .csv, .csv.gz or .parquet files")
            out.extend(found)
        elif path.is_file():
            out.append(str(path))
        else:
            raise BillingInputError(f"{p}: no such file or folder")
    return out


def _format_by_name(name: str) -> str | None:
    n = name.lower()
    if n.endswith((".parquet", ".pq", ".snappy.parquet")):
        return "parquet"
    if n.endswith((".csv", ".csv.gz", ".gz", ".tsv")):
        return "csv"
    return None


def _sniff_format(path: str) -> str:
    if os.path.getsize(path) == 0:
        raise BillingInputError(f"{path}: the file is empty; export it again or leave it out")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return "parquet"
    by_name = _format_by_name(path)
    if by_name == "parquet":
        raise BillingInputError(f"{path}: not a readable Parquet file (no PAR1 header); export it again")
    if head[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            try:
                if not g.read(1):
                    raise BillingInputError(f"{path}: the gzip file is empty; export it again or leave it out")
            except OSError as e:
                raise BillingInputError(f"{path}: corrupt gzip file ({e}); export it again") from e
    return "csv"


def _reader(fmt: str, files: Iterable[str], filename: bool = False) -> str:
    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    extra = ", filename=true" if filename else ""
    if fmt == "parquet":
        return f"read_parquet({lst}, union_by_name=true{extra})"
    return (
        f"read_csv({lst}, header=true, all_varchar=true, union_by_name=true, "
        f"nullstr=['NULL', 'null', ''], compression='auto'{extra})"
    )


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _describe(con: duckdb.DuckDBPyConnection, fmt: str, path: str) -> dict[str, tuple[str, str]]:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {_reader(fmt, [path])}").fetchall()
    except duckdb.Error as e:
        what = "Parquet" if fmt == "parquet" else "CSV"
        raise BillingInputError(f"{path}: not a readable {what} file ({_first_line(e)})") from e
    return {str(r[0]).lower(): (str(r[0]), str(r[1])) for r in rows}


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def detect_flavour(columns: Iterable[str]) -> str | None:
    cols = {c.lower() for c in columns}
    if any(m in cols for m in _MARKERS["cur-2.0"]):
        return "cur-2.0"
    if "x_usagetype" in cols and "skumeter" not in cols:
        return "focus-1.0"
    if any(m in cols for m in _MARKERS["focus-1.2"]):
        return "focus-1.2"
    if any(m in cols for m in _MARKERS["focus-1.0"]):
        return "focus-1.0"
    return None


def _check_columns(path: str, flavour: str, cols: dict[str, tuple[str, str]]) -> None:
    for fld in REQUIRED:
        cands = FIELDS[flavour][fld]
        if not any(_present(c, {k: v[0] for k, v in cols.items()}) for c in cands):
            names = " or ".join(cands)
            raise BillingInputError(
                f"{path}: {flavour} export lacks column {names} (needed for {fld}); "
                "include it in the export's column selection"
            )


def _expr(fld: str, actual: str, typ: str) -> str:
    col = _ident(actual)
    t = typ.upper()
    if fld == "ts":
        if t.startswith("TIMESTAMP WITH TIME ZONE") or t == "TIMESTAMPTZ":
            return f"CAST(timezone('UTC', {col}) AS TIMESTAMP)"
        if t.startswith("TIMESTAMP") or t == "DATE":
            return f"CAST({col} AS TIMESTAMP)"
        # The ICU-backed TIMESTAMPTZ parse costs half the load time; keep it for strings that
        # carry a UTC offset ("+02:00"), and parse naive and "Z" strings directly (both are UTC).
        tail = f"substr({col}, 12)"  # the casts skip surrounding spaces themselves
        return (
            f"CASE WHEN strpos({tail}, '+') > 0 OR strpos({tail}, '-') > 0 "
            f"THEN CAST(timezone('UTC', CAST({col} AS TIMESTAMPTZ)) AS TIMESTAMP) "
            f"ELSE CAST({col} AS TIMESTAMP) END"
        )
    if fld in ("account", "billing_account") and (t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL")):
        # An account id typed as a number in one Parquet part: 12345678901.0 -> "12345678901" (padded later).
        return f"CAST(CAST({col} AS HUGEINT) AS VARCHAR)"
    if fld in ("cost", "quantity"):
        if t == "VARCHAR":
            return f"CAST({col} AS {_NUMERIC})"  # the cast itself skips surrounding spaces
        if t.startswith("DECIMAL") or t in ("BIGINT", "INTEGER", "HUGEINT", "SMALLINT"):
            # Exact already: summed as it is and cast once per line (a per-row cast is a third of a Parquet load).
            return col
        return f"CAST({col} AS {_NUMERIC})"
    # Strings are trimmed and lower-cased after aggregation (see load), once per line and day.
    return col if t == "VARCHAR" else f"CAST({col} AS VARCHAR)"


def _source(fld: str, cand: str, group: FileGroup) -> str:
    """The SQL reading one candidate column (or one key of a MAP / JSON-object column)."""
    m = _MAP_KEY.match(cand)
    if m is None:
        return _expr(fld, group.columns[cand.lower()], group.types[cand.lower()])
    col = _ident(group.columns[m.group(1).lower()])
    key = m.group(2)
    if group.types[m.group(1).lower()].upper().startswith("MAP"):
        value = f"{col}[{_sql_str(key)}]"
    else:
        value = f"CASE WHEN json_valid({col}) THEN json_extract_string({col}, {_sql_str('$.' + key)}) END"
    return f"nullif(trim(CAST({value} AS VARCHAR)), '')"


def _product_names_later(group: FileGroup) -> bool:
    return (
        group.flavour == "cur-2.0" and group.fmt == "parquet" and group.types.get("product", "").upper().startswith("MAP")
        and "product_servicecode" in group.columns and "line_item_product_code" in group.columns
    )


def _product_names(con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup]) -> None:
    """Product names from the CUR 2.0 ``product`` map for lines whose product code is not a service
    code (a Marketplace model's code is an opaque id), read in a second, filtered pass."""
    for g in groups:
        if not _product_names_later(g):
            continue
        # Only codes on token lines without a model in the usage type (Marketplace) need a name.
        need = con.execute(
            "SELECT count(*) FROM bill_lines WHERE service = lower(product) AND usage_type ILIKE '%-MP:%'"
        ).fetchone()
        if not need or not need[0]:
            continue
        code, svc = _ident(g.columns["line_item_product_code"]), _ident(g.columns["product_servicecode"])
        prod = _ident(g.columns["product"])
        # "IS NULL" alone lets DuckDB filter inside the Parquet scan; the map is read per code, not per row.
        con.execute(
            f"""UPDATE bill_lines SET product = n.name
            FROM (SELECT code, coalesce(nullif(trim(m['product_name']), ''), nullif(trim(m['servicename']), '')) AS name
                  FROM (SELECT trim({code}) AS code, any_value({prod}) AS m FROM {_reader(g.fmt, g.files)}
                        WHERE {svc} IS NULL GROUP BY {code})) n
            WHERE bill_lines.product = n.code AND n.name IS NOT NULL"""
        )


def _select(group: FileGroup, per_file: bool = True) -> str:
    """One file group's rows in the normalised usage model, every column named.

    ``per_file``: keep each row's source file (``src``) so that a superseded copy can be taken
    out after loading. Without it the group's first file stands for all: hashing a file
    name into every row's line key doubles the load time of a single-file export.
    """
    fields = FIELDS[group.flavour]
    parts: list[str] = []
    for fld in NORMALISED:
        present = [c for c in fields.get(fld, ()) if _present(c, group.columns)]
        if not present:
            const = _CONSTANT_PROVIDER.get(group.flavour) if fld == "provider" else None
            if const is not None:
                parts.append(f"{_sql_str(const)} AS {fld}")
                continue
            typ = "TIMESTAMP" if fld == "ts" else _NUMERIC if fld in ("cost", "quantity") else "VARCHAR"
            parts.append(f"CAST(NULL AS {typ}) AS {fld}")
            continue
        # The first present candidate, falling back to later ones row by row.
        exprs = [_source(fld, c, group) for c in present]
        e = exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"
        if fld == "product" and _product_names_later(group):
            # Decoding the product MAP column costs as much as the rest of the row: the names
            # are looked up afterwards, for the few product codes that need them (_product_names).
            e = _source(fld, present[-1], group)
        elif fld == "product" and group.flavour == "cur-2.0" and "product_servicecode" in group.columns:
            # A JSON product column (CSV): parse it only on lines whose product code is not a
            # service code (Marketplace lines, opaque ids).
            code = _ident(group.columns["product_servicecode"])
            fallback = _source(fld, present[-1], group)
            e = f"CASE WHEN {code} IS NULL OR {code} = '' THEN {e} ELSE {fallback} END"
        parts.append(f"{e} AS {fld}")
    if per_file:
        parts.append("filename AS src")
    else:
        parts.append(f"{_sql_str(group.files[0])} AS src")
    return f"SELECT {', '.join(parts)} FROM {_reader(group.fmt, group.files, filename=per_file)}"


def _groups(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> list[FileGroup]:
    by_key: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[str]] = {}
    meta: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, tuple[str, str]]] = {}
    for f in files:
        fmt = _sniff_format(f)
        cols = _describe(con, fmt, f)
        flavour = detect_flavour(cols)
        if flavour is None:
            legacy = any("/" in c for c in cols)
            hint = (
                "it looks like a legacy CUR (lineItem/...) file; export CUR 2.0 or FOCUS instead"
                if legacy
                else "expected FOCUS columns (ChargePeriodStart, BilledCost, ...) or CUR 2.0 columns "
                "(line_item_usage_type, line_item_unblended_cost, ...)"
            )
            raise BillingInputError(f"{f}: not a FOCUS or CUR 2.0 billing export: {hint}")
        _check_columns(f, flavour, cols)
        # Types are part of the key: a part typing an id as BIGINT is read apart from one typing it VARCHAR.
        key = (fmt, flavour, tuple(sorted((k, v[1]) for k, v in cols.items())))
        by_key.setdefault(key, []).append(f)
        meta[key] = cols
    groups = []
    for key, fl in by_key.items():
        cols = meta[key]
        groups.append(
            FileGroup(
                fmt=key[0],
                flavour=key[1],
                files=tuple(fl),
                columns={k: v[0] for k, v in cols.items()},
                types={k: v[1] for k, v in cols.items()},
            )
        )
    return groups


def _explain_conversion(con: duckdb.DuckDBPyConnection, group: FileGroup) -> str | None:
    """Find the column whose value would not convert, to name it in the error."""
    for fld, cands in FIELDS[group.flavour].items():
        for c in cands:
            if c.lower() not in group.columns:  # also skips map keys: their values are never converted
                continue
            actual = group.columns[c.lower()]
            expr = _expr(fld, actual, group.types[c.lower()])
            try_expr = expr.replace("CAST(", "TRY_CAST(")
            try:
                row = con.execute(
                    f"SELECT {_ident(actual)}, filename FROM {_reader(group.fmt, group.files, filename=True)} "
                    f"WHERE {_ident(actual)} IS NOT NULL AND ({try_expr}) IS NULL LIMIT 1"
                ).fetchone()
            except duckdb.Error:
                continue
            if row is not None:
                return f"{row[1]}: column {actual}: cannot read value {row[0]!r} as {fld}; fix or remove the row"
    return None


def load(paths: Sequence[str], con: duckdb.DuckDBPyConnection | None = None) -> Export:
    """Read the export(s) into table ``bill`` (one row per day x account x line) in DuckDB.

    Earlier deliveries of the same billing period are dropped first (``deliveries``), and
    the day up to which every account and service is complete is judged (``_completeness``).
    """
    con = con or connect()
    all_files = expand_paths(paths)
    kept, notes = deliveries.latest_per_period(deliveries.group(all_files, deliveries.find_manifests(paths)))
    files = sorted(f for d in kept for f in d.files)
    dropped = sorted(set(all_files) - set(files))
    groups = _groups(con, files)
    # Source files are told apart only where _drop_copies may need them: files outside the Data Exports layout.
    per_file = sum(1 for d in kept if d.period is None for _ in d.files) >= 2
    selects = " UNION ALL BY NAME ".join(f"({_select(g, per_file)})" for g in groups)
    try:
        progress.execute(
            con,
            f"""
            CREATE OR REPLACE TABLE bill_lines AS
            -- Strings are trimmed and lower-cased here, once per line and day, not per raw row: that
            -- was a third of a CSV export's load time. Lines differing only in case or spacing stay
            -- separate rows; everything downstream sums over them.
            SELECT day, trim(any_value(account)) AS account, trim(any_value(billing_account)) AS billing_account,
                   lower(trim(any_value(provider))) AS provider, lower(trim(any_value(service))) AS service,
                   trim(any_value(usage_type)) AS usage_type, trim(any_value(operation)) AS operation,
                   lower(trim(any_value(charge))) AS charge, trim(any_value(unit)) AS unit,
                   trim(any_value(product)) AS product, lower(trim(any_value(currency))) AS currency,
                   any_value(src) AS src, CAST(sum(cost) AS {_NUMERIC}) AS cost,
                   CAST(sum(quantity) AS {_NUMERIC}) AS quantity, count(*) AS n_rows, max(ts) AS last_ts,
                   min(ts) AS first_ts
            FROM (
                -- One 64-bit key instead of ten string keys: the hash table stays small and fast.
                -- The source file is part of the key so that a superseded copy can be taken out again.
                SELECT *, CAST(ts AS DATE) AS day,
                       hash(account, billing_account, provider, service, usage_type, operation, charge, unit, product,
                            currency, src) AS line
                FROM ({selects})
            )
            GROUP BY day, line
            """,
            f"loading {len(files)} file(s)",
        )
    except duckdb.Error as e:
        for g in groups:
            specific = _explain_conversion(con, g)
            if specific:
                raise BillingInputError(specific) from e
        raise BillingInputError(f"{', '.join(files)}: cannot read the export ({_first_line(e)})") from e
    _product_names(con, groups)
    _canonical_accounts(con)
    covered, more = _drop_copies(con, groups, {f for d in kept if d.period is None for f in d.files})
    notes += more
    dropped = sorted(set(dropped) | covered)
    files = [f for f in files if f not in covered]

    stats = con.execute(
        "SELECT coalesce(sum(n_rows), 0), min(day), max(day), max(last_ts), "
        "count(*) FILTER (WHERE ts_null), count(*) FILTER (WHERE cost IS NULL AND n_rows > 0) "
        "FROM (SELECT *, day IS NULL AS ts_null FROM bill_lines)"
    ).fetchone()
    assert stats is not None
    n_rows = int(stats[0])
    if n_rows == 0:
        raise BillingInputError(f"{', '.join(files)}: the export has a header but no rows")
    if stats[4]:
        col = "ChargePeriodStart" if groups[0].flavour.startswith("focus") else "line_item_usage_start_date"
        raise BillingInputError(f"{', '.join(files)}: column {col} is empty on some rows; every row needs a start time")
    currencies = [r[0] for r in con.execute("SELECT DISTINCT currency FROM bill_lines WHERE currency IS NOT NULL").fetchall()]
    if len(currencies) > 1:
        col = "BillingCurrency" if groups[0].flavour.startswith("focus") else "line_item_currency_code"
        raise BillingInputError(
            f"{', '.join(files)}: column {col} mixes currencies ({', '.join(sorted(c.upper() for c in currencies))}); "
            "split the export by currency and run once per currency"
        )
    _classify(con)
    last_ts: datetime = stats[3]
    last_day: date = stats[2]
    complete, why = _completeness(con, last_day, max(os.path.getmtime(f) for f in files))
    notes += why
    services = {
        str(r[0]): int(r[1])
        for r in con.execute(
            "SELECT coalesce(service, '(none)'), sum(n_rows) FROM bill_lines GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    }
    return Export(
        con=con,
        flavours=tuple(sorted({g.flavour for g in groups if any(f in files for f in g.files)})),
        files=tuple(files),
        rows=n_rows,
        first_day=stats[1],
        last_day=last_day,
        last_ts=last_ts,
        last_day_complete=complete == last_day,
        currency=currencies[0].upper() if currencies else None,
        last_complete_day=complete,
        notes=notes,
        dropped_files=dropped,
        services=services,
    )


_AWS_PROVIDERS = "('aws', 'amazon web services', 'amazon')"


def _canonical_accounts(con: duckdb.DuckDBPyConnection) -> None:
    """AWS account ids as 12-digit strings: ``12345678901`` (an integer column) is ``012345678901``.

    Done on the aggregated lines, not per raw row: the two spellings are separate lines
    until here and merge when ``bill`` is grouped by account.
    """
    for col in ("account", "billing_account"):
        con.execute(
            f"UPDATE bill_lines SET {col} = lpad({col}, 12, '0') "
            f"WHERE length({col}) < 12 AND coalesce(provider IN {_AWS_PROVIDERS}, TRUE) "
            f"AND TRY_CAST({col} AS UBIGINT) IS NOT NULL"
        )


def _drop_copies(
    con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup], unplaced: set[str]
) -> tuple[set[str], list[str]]:
    """Remove files outside the Data Exports layout that a newer file of the same export covers."""
    if len(unplaced) < 2:
        return set(), []
    flavour_of = {f: g.flavour for g in groups for f in g.files}
    rows = con.execute(
        "SELECT src, list(DISTINCT billing_account), list(DISTINCT account), min(day), max(day) "
        "FROM bill_lines GROUP BY src"
    ).fetchall()
    extents = [
        deliveries.Extent(
            str(src), flavour_of.get(str(src), "?"), frozenset(str(b) for b in bas if b is not None),
            frozenset(str(a) for a in accts if a is not None), first, last, os.path.getmtime(str(src)),
        )
        for src, bas, accts, first, last in rows
        if first is not None
    ]
    covered, notes = deliveries.drop_covered(extents, unplaced)
    if covered:
        con.execute(f"DELETE FROM bill_lines WHERE src IN ({', '.join(_sql_str(f) for f in sorted(covered))})")
    return covered, notes


# Earlier-complete share: a day is incomplete when fewer than this share of the series
# that were complete (or present) the day before are complete (or present) on it.
_COMPLETE_SHARE = 0.5
_MAX_BACK = 7


def _completeness(con: duckdb.DuckDBPyConnection, last_day: date, written: float) -> tuple[date, list[str]]:
    """The last day that is complete for the accounts and services that report it.

    A series is one account x service. Walking back from the export's last day, a day
    is incomplete when (a) most hourly series that ran to 23:00 the day before stop
    earlier on it (an export refreshed mid-day), (b) most series present on each of
    the three days before are absent from it (a lone daily row dated the next day),
    or (c) the files were written before the day ended (a daily export refreshed
    mid-day: its rows carry no hour to judge by).
    """
    start = last_day - timedelta(days=_MAX_BACK + 3)
    rows = con.execute(
        "SELECT account, service, day, max(hour(last_ts)), bool_or(hour(last_ts) <> 0 OR hour(first_ts) <> 0) "
        "FROM bill_lines WHERE day >= ? GROUP BY account, service, day",
        [start],
    ).fetchall()
    present: dict[date, set[tuple[str, str]]] = {}
    to_23: dict[date, set[tuple[str, str]]] = {}
    for acct, svc, day, max_hour, hourly in rows:
        present.setdefault(day, set()).add((acct, svc))
        if hourly and max_hour == 23:
            to_23.setdefault(day, set()).add((acct, svc))
    written_at = datetime.fromtimestamp(written, UTC).replace(tzinfo=None)
    notes: list[str] = []
    day = last_day
    for _ in range(_MAX_BACK):
        why = _incomplete_because(day, present, to_23, written_at)
        if why is None:
            break
        notes.append(f"{day.isoformat()} is incomplete ({why}); left out")
        day -= timedelta(days=1)
    else:
        return last_day, []  # nothing looks complete: judge nothing rather than drop a week
    return day, notes


def _incomplete_because(
    day: date, present: dict[date, set[tuple[str, str]]], to_23: dict[date, set[tuple[str, str]]], written: datetime
) -> str | None:
    prev = day - timedelta(days=1)
    ran = to_23.get(prev, set())
    if ran:
        still = len(ran & to_23.get(day, set()))
        if still < _COMPLETE_SHARE * len(ran):
            return f"{len(ran) - still} of {len(ran)} account x service series that ran to 23:00 the day before stop earlier"
    regular = present.get(prev, set()) & present.get(prev - timedelta(days=1), set()) & present.get(
        prev - timedelta(days=2), set()
    )
    if len(regular) >= 2:
        there = len(regular & present.get(day, set()))
        if there < _COMPLETE_SHARE * len(regular):
            return f"only {there} of the {len(regular)} account x service series seen every day before report it"
    if written < datetime.combine(day + timedelta(days=1), datetime.min.time()):
        return f"the export files were written at {written:%Y-%m-%d %H:%M} UTC, before the day ended"
    return None


def _classify(con: duckdb.DuckDBPyConnection) -> None:
    """Classify each distinct line once in Python, then join: cheap at any row count."""
    distinct = con.execute("SELECT DISTINCT service, usage_type, operation, product FROM bill_lines").fetchall()
    kinds: list[tuple[Any, ...]] = []
    for svc, ut, op, prod in distinct:
        k = classify(svc, ut, op, prod)
        kinds.append((svc, ut, op, prod, k.kind, k.token_class, k.model, k.model_label))
    con.execute(
        "CREATE OR REPLACE TABLE line_kinds (service VARCHAR, usage_type VARCHAR, operation VARCHAR, product VARCHAR, "
        "kind VARCHAR, token_class VARCHAR, model VARCHAR, model_label VARCHAR)"
    )
    if kinds:
        con.executemany("INSERT INTO line_kinds VALUES (?, ?, ?, ?, ?, ?, ?, ?)", kinds)
    units = [r[0] for r in con.execute("SELECT DISTINCT unit FROM bill_lines").fetchall()]
    con.execute("CREATE OR REPLACE TABLE unit_mults (unit VARCHAR, mult DECIMAL(18,0))")
    con.executemany("INSERT INTO unit_mults VALUES (?, ?)", [(u, unit_multiplier(u)) for u in units])
    con.execute(
        f"""
        CREATE OR REPLACE TABLE bill AS
        SELECT l.day, l.account, l.service, k.kind, k.token_class, k.model, k.model_label, l.usage_type,
               l.operation, l.charge, l.unit, l.currency, l.cost,
               l.quantity, CAST(l.quantity * u.mult AS {_NUMERIC}) AS tokens, u.mult AS unit_mult, l.n_rows,
               replace(l.charge, ' ', '') IN ('usage', 'discountedusage', 'savingsplancoveredusage') AS is_usage
        FROM bill_lines l
        JOIN line_kinds k ON l.service IS NOT DISTINCT FROM k.service AND l.usage_type IS NOT DISTINCT FROM k.usage_type
             AND l.operation IS NOT DISTINCT FROM k.operation AND l.product IS NOT DISTINCT FROM k.product
        LEFT JOIN unit_mults u ON l.unit IS NOT DISTINCT FROM u.unit
        """
    )
