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
from tokenfuse.billing.usagetypes import USAGE_CHARGES, LineKind, classify, unit_multiplier

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


def _reader(fmt: str, files: Iterable[str], filename: bool = False, row_numbers: bool = False) -> str:
    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    extra = ", filename=true" if filename else ""
    if fmt == "parquet":
        extra += ", file_row_number=true" if row_numbers else ""
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
        # Microseconds since the epoch (UTC): days are then integer division, and no per-row
        # timezone conversion is needed (converting a TIMESTAMPTZ to TIMESTAMP goes through ICU and
        # cost a third of a CSV load). A string is parsed as TIMESTAMPTZ: naive and "Z" strings are
        # UTC (the connection's time zone), offsets ("+02:00") are applied.
        if t.startswith("TIMESTAMP") or t == "DATE":
            return f"epoch_us(CAST({col} AS TIMESTAMP))" if t == "DATE" else f"epoch_us({col})"
        return f"epoch_us(CAST({col} AS TIMESTAMPTZ))"
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
    # Strings are trimmed and lower-cased once per distinct line (_normalise_lines), not per row.
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


def _names_looked_up(group: FileGroup) -> bool:
    """Whether the group's product names are looked up per product code after loading (see
    ``_product_names``) instead of read on every row: decoding the CUR 2.0 ``product`` MAP (Parquet)
    or JSON (CSV) column costs as much as the rest of the row, and only a few codes need a name."""
    return (
        group.flavour == "cur-2.0" and "product" in group.columns
        and "product_servicecode" in group.columns and "line_item_product_code" in group.columns
    )


# A product code needs a name when its lines have no service code and are AI inference whose model
# is not in the usage type (a Marketplace model's code is an opaque id, b3hzdk7mhh2vz0ywa7kjh0eyt).
_NAME_LOOKUPS_MAX = 50


def _product_name(con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup], code: str) -> str | None:
    """The product name of one product code, from the first row that has one.

    ``LIMIT 1`` lets DuckDB stop reading at that row, usually within the first block of the file.
    """
    for g in groups:
        if not _names_looked_up(g):
            continue
        col = _ident(g.columns["product"])
        if g.types["product"].upper().startswith("MAP"):
            name = f"coalesce(nullif(trim({col}['product_name']), ''), nullif(trim({col}['servicename']), ''))"
        else:
            name = (
                f"CASE WHEN json_valid({col}) THEN coalesce(nullif(trim(json_extract_string({col}, '$.product_name')), ''), "
                f"nullif(trim(json_extract_string({col}, '$.servicename')), '')) END"
            )
        svc, pc = _ident(g.columns["product_servicecode"]), _ident(g.columns["line_item_product_code"])
        row = con.execute(
            f"SELECT n FROM (SELECT {name} AS n FROM {_reader(g.fmt, g.files)} "
            f"WHERE {pc} = ? AND ({svc} IS NULL OR trim({svc}) = '')) WHERE n IS NOT NULL LIMIT 1",
            [code],
        ).fetchone()
        if row is not None:
            return str(row[0])
    return None


def _select(
    group: FileGroup, per_file: bool = True, billing_account: bool = True, rowref: int | None = None, where: str = ""
) -> str:
    """One file group's rows in the normalised usage model, every column named.

    ``per_file``: keep each row's source file (``src``) so that a superseded copy can be taken
    out after loading. Without it the group's first file stands for all: hashing a file
    name into every row's line key doubles the load time of a single-file export.
    ``billing_account``: read it (only ``_drop_copies`` needs it).
    ``rowref`` (Parquet): this group's index; adds column ``rowref``, where the row is (see ``_rowref``).
    ``where``: a filter on the raw rows.
    """
    fields = FIELDS[group.flavour]
    parts: list[str] = []
    for fld in NORMALISED:
        present = [c for c in fields.get(fld, ()) if _present(c, group.columns)]
        if fld == "billing_account" and not billing_account:
            present = []
        if not present:
            const = _CONSTANT_PROVIDER.get(group.flavour) if fld == "provider" else None
            if const is not None:
                parts.append(f"{_sql_str(const)} AS {fld}")
                continue
            typ = "BIGINT" if fld == "ts" else _NUMERIC if fld in ("cost", "quantity") else "VARCHAR"
            parts.append(f"CAST(NULL AS {typ}) AS {fld}")
            continue
        # The first present candidate, falling back to later ones row by row.
        exprs = [_source(fld, c, group) for c in present]
        e = exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"
        if fld == "product" and _names_looked_up(group):
            e = _source(fld, present[-1], group)  # the product code; names are looked up per code
        parts.append(f"{e} AS {fld}")
    if _names_looked_up(group):
        svc = _ident(group.columns["product_servicecode"])
        parts.append(f"({svc} IS NULL OR {svc} = '') AS nosvc")
    else:
        parts.append("FALSE AS nosvc")
    if per_file:
        parts.append("filename AS src")
    else:
        parts.append(f"{_sql_str(group.files[0])} AS src")
    if rowref is not None:
        parts.append(f"{_rowref(rowref)} AS rowref")
    reader = _reader(group.fmt, group.files, filename=per_file, row_numbers=rowref is not None)
    return f"SELECT {', '.join(parts)} FROM {reader}" + (f" WHERE {where}" if where else "")


# A Parquet row's place in one number: file group, file within the group, row within the file.
_GROUP_SHIFT, _FILE_SHIFT = 56, 36


def _rowref(group_index: int) -> str:
    return f"(CAST({group_index} AS BIGINT) << {_GROUP_SHIFT}) | (CAST(file_index AS BIGINT) << {_FILE_SHIFT}) | file_row_number"


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
    try:
        _scan(con, groups, per_file)
    except duckdb.Error as e:
        for g in groups:
            specific = _explain_conversion(con, g)
            if specific:
                raise BillingInputError(specific) from e
        raise BillingInputError(f"{', '.join(files)}: cannot read the export ({_first_line(e)})") from e
    _normalise_lines(con)
    _canonical_accounts(con)
    covered, more = _drop_copies(con, groups, {f for d in kept if d.period is None for f in d.files})
    notes += more
    dropped = sorted(set(dropped) | covered)
    files = [f for f in files if f not in covered]

    stats = con.execute(
        "SELECT coalesce(sum(n_rows), 0), min(day), max(day), max(last_ts), "
        "count(*) FILTER (WHERE day IS NULL), count(*) FILTER (WHERE cost IS NULL AND n_rows > 0) FROM cells"
    ).fetchone()
    assert stats is not None
    n_rows = int(stats[0])
    if n_rows == 0:
        raise BillingInputError(f"{', '.join(files)}: the export has a header but no rows")
    if stats[4]:
        col = "ChargePeriodStart" if groups[0].flavour.startswith("focus") else "line_item_usage_start_date"
        raise BillingInputError(f"{', '.join(files)}: column {col} is empty on some rows; every row needs a start time")
    currencies = [r[0] for r in con.execute("SELECT DISTINCT currency FROM lines WHERE currency IS NOT NULL").fetchall()]
    if len(currencies) > 1:
        col = "BillingCurrency" if groups[0].flavour.startswith("focus") else "line_item_currency_code"
        raise BillingInputError(
            f"{', '.join(files)}: column {col} mixes currencies ({', '.join(sorted(c.upper() for c in currencies))}); "
            "split the export by currency and run once per currency"
        )
    _classify(con, groups)
    last_ts: datetime = stats[3]
    last_day: date = stats[2]
    complete, why = _completeness(con, last_day, max(os.path.getmtime(f) for f in files))
    notes += why
    services = {
        str(r[0]): int(r[1])
        for r in con.execute(
            "SELECT coalesce(l.service, '(none)'), sum(n.n) FROM (SELECT line, sum(n_rows) AS n FROM cells GROUP BY line) n "
            "JOIN lines l USING (line) GROUP BY 1 ORDER BY 2 DESC, 1"
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


# What tells one billing line from another (besides account and day); hashed into one 64-bit key.
_LINE_KEY: tuple[str, ...] = (
    "provider", "service", "usage_type", "operation", "charge", "unit", "product", "currency", "billing_account",
    "src", "nosvc",
)
_DAY_US = 86_400_000_000


def _scan(con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup], per_file: bool) -> None:
    """The one pass over the raw rows: table ``cells`` (account x day x line: sums, row count, first
    and last timestamp) and table ``raw_lines`` (line -> its strings, as the file spells them).

    Per row only a 64-bit hash of the line's strings is computed and grouped with the account and
    the day; strings are trimmed, lower-cased and classified once per distinct line afterwards.
    Keeping the strings per cell instead (``any_value``) cost as much as the rest of the scan, and
    a second ``DISTINCT`` pass over the strings half as much again (4.5 CPU s at 100 M rows).
    Parquet: each cell keeps its first row's number, and one row per distinct line is read back
    by number (DuckDB prunes the file to a few row groups). CSV has no row numbers and re-parsing
    it would double the load, so both tables come from the one pass with GROUPING SETS.
    """
    selects = " UNION ALL BY NAME ".join(f"({_select(g, per_file, per_file)})" for g in groups)
    # Only what can differ between lines is hashed per row: the source file and billing account
    # are read only when _drop_copies needs them, and CUR's provider is a constant.
    kept = [f for f in _LINE_KEY if per_file or f not in ("billing_account", "src")]
    key = ", ".join(kept)
    hashed = ", ".join(
        f for f in kept if not (f == "provider" and all(g.flavour in _CONSTANT_PROVIDER for g in groups))
    )
    line_cols = ", ".join(f if f in kept else f"CAST(NULL AS VARCHAR) AS {f}" for f in _LINE_KEY)
    cell_cols = (
        f"DATE '1970-01-01' + CAST(dn AS INTEGER) AS day, account, line, CAST(sum(cost) AS {_NUMERIC}) AS cost, "
        f"CAST(sum(quantity) AS {_NUMERIC}) AS quantity, count(*) AS n_rows, make_timestamp(max(ts)) AS last_ts, "
        "make_timestamp(min(ts)) AS first_ts"
    )
    rows = f"SELECT *, ts // {_DAY_US} AS dn, hash({hashed}) AS line FROM ({selects})"
    if all(g.fmt == "parquet" for g in groups) and len(groups) < 1 << (63 - _GROUP_SHIFT):
        # Each cell keeps where its first row is; one row per distinct line is then read back
        # by row number, which DuckDB turns into reading a few row groups.
        selects = " UNION ALL BY NAME ".join(
            f"({_select(g, per_file, per_file, rowref=i)})" for i, g in enumerate(groups)
        )
        rows = f"SELECT *, ts // {_DAY_US} AS dn, hash({hashed}) AS line FROM ({selects})"
        progress.execute(
            con,
            f"CREATE OR REPLACE TABLE cells AS SELECT {cell_cols}, min(rowref) AS rowref FROM ({rows}) "
            "GROUP BY dn, account, line",
            "loading",
        )
        refs = [int(r[0]) for r in con.execute("SELECT min(rowref) FROM cells GROUP BY line").fetchall()]
        con.execute("ALTER TABLE cells DROP COLUMN rowref")
        fetch = []
        for i, g in enumerate(groups):
            mine = [r for r in refs if r >> _GROUP_SHIFT == i]
            if mine:
                numbers = ", ".join(str(r & ((1 << _FILE_SHIFT) - 1)) for r in sorted(set(mine)))
                fetch.append(f"({_select(g, per_file, per_file, rowref=i, where=f'file_row_number IN ({numbers})')})")
        source = " UNION ALL BY NAME ".join(fetch) or f"SELECT * FROM ({selects}) WHERE FALSE"
        con.execute(
            f"CREATE OR REPLACE TABLE raw_lines AS SELECT DISTINCT hash({hashed}) AS line, {line_cols} FROM ({source}) "
            f"WHERE rowref IN ({', '.join(str(r) for r in refs) or 'NULL'})"
        )
        missing = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT line FROM cells) WHERE line NOT IN (SELECT line FROM raw_lines)"
        ).fetchone()
        if missing and missing[0]:  # only if a file changed while it was read: read every line's strings
            con.execute(
                f"CREATE OR REPLACE TABLE raw_lines AS SELECT hash({hashed}) AS line, {line_cols} "
                f"FROM (SELECT DISTINCT {key} FROM ({selects}))"
            )
        return
    progress.execute(
        con,
        f"""CREATE OR REPLACE TEMP TABLE scan AS
        SELECT grouping(dn) AS lines_set, {cell_cols}, {key}
        FROM ({rows}) GROUP BY GROUPING SETS ((dn, account, line), (line, {key}))""",
        "loading",
    )
    con.execute(
        "CREATE OR REPLACE TABLE cells AS SELECT day, account, line, cost, quantity, n_rows, last_ts, first_ts "
        "FROM scan WHERE lines_set = 0"
    )
    con.execute(f"CREATE OR REPLACE TABLE raw_lines AS SELECT line, {line_cols} FROM scan WHERE lines_set = 1")
    con.execute("DROP TABLE scan")


def _normalise_lines(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``lines``: one row per distinct line, strings trimmed and lower-cased.

    Lines differing only in case or spacing stay separate rows; everything downstream sums over them.
    """
    con.execute(
        """CREATE OR REPLACE TABLE lines AS
        SELECT line, trim(billing_account) AS billing_account, lower(trim(provider)) AS provider,
               lower(trim(service)) AS service, trim(usage_type) AS usage_type, trim(operation) AS operation,
               lower(trim(charge)) AS charge, trim(unit) AS unit, trim(product) AS product,
               lower(trim(currency)) AS currency, src, nosvc
        FROM raw_lines"""
    )
    con.execute("DROP TABLE raw_lines")


_AWS_PROVIDERS = "('aws', 'amazon web services', 'amazon')"


def _canonical_accounts(con: duckdb.DuckDBPyConnection) -> None:
    """Account ids trimmed, and AWS ones as 12-digit strings: ``12345678901`` (an integer column) is
    ``012345678901``.

    Worked out per distinct account, and ``cells`` is updated only for the ids that change (none
    in a usual export): the two spellings are separate cells until here and merge when ``bill``
    is grouped by account.
    """
    con.execute(
        f"UPDATE lines SET billing_account = lpad(billing_account, 12, '0') "
        f"WHERE length(billing_account) < 12 AND coalesce(provider IN {_AWS_PROVIDERS}, TRUE) "
        f"AND TRY_CAST(billing_account AS UBIGINT) IS NOT NULL"
    )
    accounts = [r[0] for r in con.execute("SELECT DISTINCT account FROM cells WHERE account IS NOT NULL").fetchall()]
    trim = [(a, a.strip()) for a in accounts if a != a.strip()]
    if trim:
        con.execute("CREATE OR REPLACE TEMP TABLE account_map (raw VARCHAR, canon VARCHAR)")
        con.executemany("INSERT INTO account_map VALUES (?, ?)", trim)
        con.execute("UPDATE cells SET account = m.canon FROM account_map m WHERE cells.account = m.raw")
    short = sorted({c for _, c in trim} | set(accounts) - {a for a, _ in trim})
    short = [a for a in short if len(a) < 12 and a.isdigit() and a.isascii()]
    if short:
        con.execute("CREATE OR REPLACE TEMP TABLE account_map (raw VARCHAR)")
        con.executemany("INSERT INTO account_map VALUES (?)", [(a,) for a in short])
        con.execute(
            f"UPDATE cells SET account = lpad(cells.account, 12, '0') FROM lines l "
            f"WHERE cells.line = l.line AND cells.account IN (SELECT raw FROM account_map) "
            f"AND coalesce(l.provider IN {_AWS_PROVIDERS}, TRUE)"
        )


def _drop_copies(
    con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup], unplaced: set[str]
) -> tuple[set[str], list[str]]:
    """Remove files outside the Data Exports layout that a newer file of the same export covers."""
    if len(unplaced) < 2:
        return set(), []
    flavour_of = {f: g.flavour for g in groups for f in g.files}
    rows = con.execute(
        "SELECT l.src, list(DISTINCT l.billing_account), list(DISTINCT c.account), min(c.day), max(c.day) "
        "FROM cells c JOIN lines l USING (line) GROUP BY l.src"
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
        # The source file is part of the line key: a covered file's lines are its own.
        in_covered = f"src IN ({', '.join(_sql_str(f) for f in sorted(covered))})"
        con.execute(f"DELETE FROM cells WHERE line IN (SELECT line FROM lines WHERE {in_covered})")
        con.execute(f"DELETE FROM lines WHERE {in_covered}")
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
        "SELECT c.account, l.service, c.day, max(hour(c.last_ts)), bool_or(hour(c.last_ts) <> 0 OR hour(c.first_ts) <> 0) "
        "FROM cells c JOIN lines l USING (line) WHERE c.day >= ? GROUP BY c.account, l.service, c.day",
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


def _classify(con: duckdb.DuckDBPyConnection, groups: Sequence[FileGroup]) -> None:
    """Classify each distinct line once in Python (table ``lines`` gains kind, token class, model,
    unit multiplier), and define the views ``bill`` and ``bill_lines`` over ``cells`` x ``lines``."""
    lines = con.execute("SELECT line, service, usage_type, operation, product, unit, charge, nosvc FROM lines").fetchall()
    kinds: dict[tuple[Any, ...], LineKind] = {}
    for _, svc, ut, op, prod, *_rest in lines:
        if (svc, ut, op, prod) not in kinds:
            kinds[(svc, ut, op, prod)] = classify(svc, ut, op, prod)
    # Product codes standing in for a model name: look the name up (see _names_looked_up).
    codes = sorted({
        prod for _, svc, ut, op, prod, _u, _c, nosvc in lines
        if nosvc and prod and kinds[(svc, ut, op, prod)].kind == "inference"
        and kinds[(svc, ut, op, prod)].model_label == prod
    })
    names: dict[str, str] = {}
    for code in codes[:_NAME_LOOKUPS_MAX]:
        name = _product_name(con, groups, code)
        if name is not None:
            names[code] = name
    rows: list[tuple[Any, ...]] = []
    for line, svc, ut, op, prod, unit, charge, nosvc in lines:
        if nosvc and prod in names:
            prod = names[prod]
            k = kinds.get((svc, ut, op, prod)) or kinds.setdefault((svc, ut, op, prod), classify(svc, ut, op, prod))
        else:
            k = kinds[(svc, ut, op, prod)]
        is_usage = None if charge is None else charge.replace(" ", "") in USAGE_CHARGES
        rows.append((line, prod, k.kind, k.token_class, k.model, k.model_label, unit_multiplier(unit), is_usage))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE line_kinds (line UBIGINT, product VARCHAR, kind VARCHAR, token_class VARCHAR, "
        "model VARCHAR, model_label VARCHAR, unit_mult DECIMAL(18,0), is_usage BOOLEAN)"
    )
    if rows:
        con.executemany("INSERT INTO line_kinds VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute(
        """CREATE OR REPLACE TABLE lines AS
        SELECT l.* REPLACE (k.product AS product), k.kind, k.token_class, k.model, k.model_label, k.unit_mult, k.is_usage
        FROM lines l JOIN line_kinds k USING (line)"""
    )
    con.execute("DROP TABLE line_kinds")
    # Views, not tables: a join of the cells with a few hundred lines is cheap, a materialised
    # copy of every cell with a dozen strings was most of the memory at 100 M rows.
    con.execute(
        f"""CREATE OR REPLACE VIEW bill AS
        SELECT c.day, c.account, l.service, l.kind, l.token_class, l.model, l.model_label, l.usage_type,
               l.operation, l.charge, l.unit, l.currency, c.cost, c.quantity,
               CAST(c.quantity * l.unit_mult AS {_NUMERIC}) AS tokens, l.unit_mult, c.n_rows, l.is_usage
        FROM cells c JOIN lines l USING (line)"""
    )
    con.execute(
        """CREATE OR REPLACE VIEW bill_lines AS
        SELECT c.day, c.account, l.billing_account, l.provider, l.service, l.usage_type, l.operation, l.charge,
               l.unit, l.product, l.currency, l.src, c.cost, c.quantity, c.n_rows, c.last_ts, c.first_ts
        FROM cells c JOIN lines l USING (line)"""
    )
