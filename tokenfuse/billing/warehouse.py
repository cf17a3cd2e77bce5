"""Every check as warehouse SQL: one definition, transpiled per engine by sqlglot.

The checks (runaway inference, caching health, budget advice, and the aggregation
side of ``reconcile``) are written once, in DuckDB's dialect, over the raw export
table; :func:`render` hands them to sqlglot (a maintained SQL transpiler) for Athena,
Trino, BigQuery, Snowflake or Spark SQL. Column names come from the same candidate
lists ``load`` reads files with (``load.FIELDS``), and token classes from the same
regular expressions ``usagetypes`` classifies with, so a warehouse run and a local run
judge the same rows the same way.

What the warehouse SQL does not do, and ``detect`` on files does (docs/billing.md):
export de-duplication, per-account completeness, and model names canonicalised across
usage-type generations (here the key is the model as the meter spells it, with spaces,
dashes and underscores removed). The calendar is the set of days the export has any
row on, not a generated series, so that no engine-specific series function is needed.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, timedelta

from tokenfuse.billing.load import _MAP_KEY, FIELDS
from tokenfuse.billing.sql import (
    BASELINE_FIRST_BACK,
    BASELINE_LAST_BACK,
    CLASS_COLUMNS,
    MIN_BASELINE_USD,
    RECENT_DAYS,
    SIGMA,
    SIGMA_FLOOR_FRACTION,
)
from tokenfuse.billing.usagetypes import (
    BEDROCK_SERVICES,
    CLOUD_AI_SERVICES,
    COMPUTE_SERVICES,
    INFERENCE_OPERATION_PATTERN,
    LLM_API_SERVICES,
    MARKETPLACE_PATTERN,
    MODEL_SERVICE_PATTERN,
    TOKEN_CLASS_PATTERNS,
)

ENGINES: tuple[str, ...] = ("duckdb", "athena", "trino", "bigquery", "snowflake", "spark")
CHECKS: tuple[str, ...] = ("runaway", "caching", "budget", "reconcile")
# sqlglot's dialect name for each engine.
_DIALECT = {"duckdb": "duckdb", "athena": "athena", "trino": "trino", "bigquery": "bigquery",
            "snowflake": "snowflake", "spark": "spark"}
# Caching health, as in detect.py.
CACHE_READ_RATIO = "0.5"
CACHE_MIN_INPUT_TOKENS = 1_000_000
# Model families with prompt caching (usagetypes.model_supports_caching), on the meter's spelling.
_CACHING_FAMILY = r"claude|nova|gpt-?4o|gpt-?4\.1|gpt-?5|^o[134]|gemini"
# Where the model ends in a first-party Bedrock usage type, and in an Azure meter / Vertex SKU.
_AWS_MODEL = r"^[a-z]{2,4}[0-9]?-(.+?)-(mantle-)?(input|output|cache)[-_]"
_METER_MODEL = r"^(.+?)[-_ ](cached|cache|inpt?|input|outp|output|opt|text|txt|aud)([-_ ]|$)"
_UNIT_MILLION = r"(^|[^a-z])(1m|1,000,000|1000000|million|mtok)"
_UNIT_THOUSAND = r"(^|[^a-z])(1k|1,000|1000|thousand|ktok)"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _date(d: date) -> str:
    return f"DATE '{d.isoformat()}'"


def _search(expr: str, pattern: str) -> str:
    # ".*(...).*": Snowflake's REGEXP_LIKE matches the whole string, the others search.
    return f"regexp_matches({expr}, {_lit('.*(' + pattern + ').*')})"


def _in(expr: str, values: Collection[str]) -> str:
    return f"{expr} IN ({', '.join(_lit(v) for v in sorted(values))})"


def _column(flavour: str, fld: str, columns: Collection[str] | None) -> str | None:
    """The export column for a normalised field: the first candidate present (or, with no
    column list, the first plain candidate). Map keys are left out: their syntax differs per engine."""
    cands = [c for c in FIELDS[flavour].get(fld, ()) if not _MAP_KEY.match(c)]
    if columns is None:
        columns = _STANDARD[flavour]
    if columns is not None:
        lower = {c.lower(): c for c in columns}
        present = [lower[c.lower()] for c in cands if c.lower() in lower]
        if not present:
            return None
        return present[0] if len(present) == 1 else f"coalesce({', '.join(present)})"
    return cands[0] if cands else None


# The columns every export of a flavour has (what --print-sql assumes without a file to look at).
_STANDARD: dict[str, tuple[str, ...]] = {
    "cur-2.0": (
        "line_item_usage_start_date", "line_item_unblended_cost", "line_item_usage_account_id", "product_servicecode",
        "line_item_product_code", "line_item_usage_type", "line_item_operation", "line_item_line_item_type",
        "line_item_usage_amount", "pricing_unit",
    ),
    "focus-1.0": (
        "ChargePeriodStart", "BilledCost", "SubAccountId", "BillingAccountId", "ServiceName", "x_ServiceCode",
        "x_UsageType", "x_Operation", "ChargeCategory", "PricingQuantity", "PricingUnit",
    ),
    "focus-1.2": (
        "ChargePeriodStart", "BilledCost", "SubAccountId", "BillingAccountId", "ServiceName", "x_ServiceCode",
        "SkuMeter", "x_Operation", "ChargeCategory", "PricingQuantity", "PricingUnit",
    ),
}


def _base(flavour: str, table: str, start: date, end: date, columns: Collection[str] | None) -> str:
    """CTEs ``classified`` (one row per export row in the window, typed) and ``calendar``."""

    def col(fld: str, default: str = "NULL") -> str:
        c = _column(flavour, fld, columns)
        return c if c is not None else default

    ts = col("ts")
    day = f"CAST(substr(CAST({ts} AS VARCHAR), 1, 10) AS DATE)"
    cls_case = "CASE " + " ".join(
        f"WHEN {_search('usage_type', p)} THEN {_lit(c)}" for c, p in TOKEN_CLASS_PATTERNS
    ) + " END"
    bedrock = _in("service", BEDROCK_SERVICES)
    ai = f"({_in('service', BEDROCK_SERVICES | LLM_API_SERVICES | CLOUD_AI_SERVICES)} OR " \
         f"{_search('service', MODEL_SERVICE_PATTERN)} OR usage_type LIKE {_lit('%' + MARKETPLACE_PATTERN + '%')})"
    raw_model = (
        f"CASE WHEN {bedrock} THEN nullif(regexp_extract(usage_type, {_lit(_AWS_MODEL)}, 1), '') "
        f"ELSE nullif(regexp_extract(usage_type, {_lit(_METER_MODEL)}, 1), '') END"
    )
    return f"""raw AS (
    SELECT {day} AS day, CAST({col('account')} AS VARCHAR) AS account,
           lower(trim(CAST({col('service')} AS VARCHAR))) AS service,
           lower(trim(CAST({col('usage_type')} AS VARCHAR))) AS usage_type,
           lower(trim(CAST({col('operation')} AS VARCHAR))) AS operation,
           replace(lower(CAST({col('charge')} AS VARCHAR)), ' ', '') AS charge,
           lower(trim(CAST({col('unit')} AS VARCHAR))) AS unit,
           lower(trim(CAST({col('product')} AS VARCHAR))) AS product,
           CAST({col('cost')} AS DECIMAL(38, 12)) AS cost,
           CAST({col('quantity', '0')} AS DECIMAL(38, 12)) AS quantity
    FROM {table}
    WHERE {day} >= {_date(start)} AND {day} <= {_date(end)}
),
typed AS (
    SELECT *, {cls_case} AS token_class,
           charge IN ('usage', 'discountedusage', 'savingsplancoveredusage') AS is_usage
    FROM raw
),
classified AS (
    SELECT day, account, cost, token_class, is_usage,
           CASE WHEN token_class IS NOT NULL AND {ai} THEN 'inference'
                WHEN {bedrock} AND {_search("coalesce(operation, '')", INFERENCE_OPERATION_PATTERN)} THEN 'inference'
                WHEN {bedrock} THEN 'bedrock'
                WHEN {_in('service', COMPUTE_SERVICES)} THEN 'compute' ELSE 'other' END AS kind,
           -- The model as the meter spells it, spaces, dashes and underscores removed.
           replace(replace(replace(coalesce({raw_model}, product, service), ' ', ''), '-', ''), '_', '') AS model,
           quantity * CASE WHEN {_search('coalesce(unit, ' + _lit('') + ')', _UNIT_MILLION)} THEN 1000000
                           WHEN {_search('coalesce(unit, ' + _lit('') + ')', _UNIT_THOUSAND)} THEN 1000
                           ELSE 1 END AS tokens
    FROM typed
),
calendar AS (SELECT DISTINCT day FROM raw)"""


def _runaway_ctes(as_of: date) -> str:
    inf = "kind = 'inference' AND is_usage"
    cls_cols = ",\n           ".join(
        f"sum(CASE WHEN {inf} AND token_class IN ({', '.join(_lit(c) for c in classes)}) THEN cost ELSE 0 END) AS {name}"
        for name, classes in CLASS_COLUMNS
    )
    filled_cls = ", ".join(f"coalesce(x.{name}, 0) AS {name}" for name, _ in CLASS_COLUMNS)
    recent = f"back BETWEEN 1 AND {RECENT_DAYS}"
    base = f"back BETWEEN {BASELINE_FIRST_BACK} AND {BASELINE_LAST_BACK}"
    return f"""daily AS (
    SELECT account, day,
           sum(CASE WHEN {inf} THEN cost ELSE 0 END) AS inference_cost,
           {cls_cols},
           sum(CASE WHEN kind = 'compute' THEN cost ELSE 0 END) AS compute_cost
    FROM classified
    GROUP BY account, day
),
accounts AS (SELECT DISTINCT account FROM daily),
filled AS (
    SELECT a.account, c.day, date_diff('day', c.day, {_date(as_of)}) AS back,
           coalesce(x.inference_cost, 0) AS inference_cost, {filled_cls},
           coalesce(x.compute_cost, 0) AS compute_cost
    FROM accounts a CROSS JOIN calendar c
    LEFT JOIN daily x ON x.account = a.account AND x.day = c.day
),
stats AS (
    SELECT account,
           avg(CASE WHEN {recent} THEN inference_cost END) AS recent_avg,
           avg(CASE WHEN {base} THEN inference_cost END) AS baseline_avg,
           stddev_samp(CASE WHEN {base} THEN inference_cost END) AS baseline_stddev,
           count(CASE WHEN {recent} THEN 1 END) AS recent_days,
           count(CASE WHEN {base} THEN 1 END) AS baseline_days,
           avg(CASE WHEN {recent} THEN compute_cost END) AS recent_compute,
           avg(CASE WHEN {base} THEN compute_cost END) AS baseline_compute
    FROM filled
    GROUP BY account
),
judged AS (
    SELECT *,
           baseline_avg + {SIGMA} * greatest(coalesce(baseline_stddev, 0), {SIGMA_FLOOR_FRACTION} * baseline_avg)
               AS threshold
    FROM stats
),
runaway AS (
    SELECT *, recent_avg / nullif(baseline_avg, 0) AS spike_ratio,
           coalesce(recent_days = {RECENT_DAYS} AND baseline_days >= 7 AND baseline_avg > {MIN_BASELINE_USD}
                    AND recent_avg > threshold, FALSE) AS flagged
    FROM judged
)"""


def check_sql(
    check: str, flavour: str, table: str, as_of: date, columns: Collection[str] | None = None
) -> str:
    """One check in DuckDB's dialect: the single definition every engine's SQL comes from."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; choose {', '.join(CHECKS)}")
    end = as_of - timedelta(days=1)
    month_end = as_of.replace(day=1) - timedelta(days=1)
    month_start = month_end.replace(day=1)
    start = min(as_of - timedelta(days=BASELINE_LAST_BACK), month_start)
    head = f"WITH {_base(flavour, table, start, end, columns)},\n{_runaway_ctes(as_of)}"
    window = f"day >= {_date(as_of - timedelta(days=BASELINE_LAST_BACK))}"
    if check == "runaway":
        return f"""{head}
SELECT account, recent_avg, baseline_avg, baseline_stddev, threshold, spike_ratio, recent_compute,
       baseline_compute, flagged
FROM runaway
ORDER BY flagged DESC, spike_ratio DESC, account"""
    if check == "caching":
        return f"""{head},
per_model AS (
    SELECT account, model,
           sum(CASE WHEN token_class = 'input_uncached' THEN tokens ELSE 0 END) AS uncached_input_tokens,
           sum(CASE WHEN token_class = 'cache_read' THEN tokens ELSE 0 END) AS cache_read_tokens,
           sum(CASE WHEN token_class IN ('cache_write', 'cache_write_1h') THEN tokens ELSE 0 END) AS cache_write_tokens,
           sum(CASE WHEN token_class = 'input_uncached' THEN cost ELSE 0 END) AS uncached_input_usd,
           sum(CASE WHEN token_class = 'cache_read' THEN cost ELSE 0 END) AS cache_read_usd
    FROM classified
    WHERE kind = 'inference' AND is_usage AND {window}
    GROUP BY account, model
)
SELECT *,
       (cache_read_tokens > 0 OR cache_write_tokens > 0 OR {_search('model', _CACHING_FAMILY)}) AS supports_caching,
       ((cache_read_tokens > 0 OR cache_write_tokens > 0 OR {_search('model', _CACHING_FAMILY)})
        AND uncached_input_tokens >= {CACHE_MIN_INPUT_TOKENS}
        AND cache_read_tokens < uncached_input_tokens * {CACHE_READ_RATIO}) AS cache_miss
FROM per_model
WHERE uncached_input_tokens > 0 OR cache_read_tokens > 0
ORDER BY account, model"""
    if check == "budget":
        n_days = (month_end - month_start).days + 1
        return f"""{head},
spend AS (
    SELECT account, day, sum(cost) AS cost
    FROM classified
    WHERE kind IN ('inference', 'bedrock') AND day >= {_date(month_start)} AND day <= {_date(month_end)}
    GROUP BY account, day
),
-- An incident's days are left out and the rest scaled back to the month: a budget set
-- from a month that includes the incident would allow the incident.
marked AS (
    SELECT s.account, s.cost,
           coalesce(r.flagged AND s.cost > r.threshold AND s.day >= {_date(as_of - timedelta(days=BASELINE_LAST_BACK))},
                    FALSE) AS excluded
    FROM spend s LEFT JOIN runaway r ON r.account = s.account
),
per_account AS (
    SELECT account, sum(cost) AS spend_usd,
           sum(CASE WHEN excluded THEN cost ELSE 0 END) AS excluded_usd,
           count(CASE WHEN excluded THEN 1 END) AS excluded_days
    FROM marked
    GROUP BY account
)
SELECT account, {_lit(month_start.strftime('%Y-%m'))} AS period, spend_usd, excluded_usd, excluded_days,
       CAST(2 * (spend_usd - excluded_usd) * {n_days} / ({n_days} - excluded_days) AS DECIMAL(38, 6))
           AS monthly_budget_usd
FROM per_account
WHERE spend_usd > 0
ORDER BY account"""
    return f"""{head}
SELECT day, account, model, token_class, sum(tokens) AS tokens, sum(cost) AS cost
FROM classified
WHERE kind = 'inference' AND is_usage AND token_class IS NOT NULL
GROUP BY day, account, model, token_class
ORDER BY day, account, model, token_class"""


def render(
    engine: str, check: str, flavour: str, table: str, as_of: date, columns: Collection[str] | None = None
) -> str:
    """``check`` for ``engine``, transpiled from :func:`check_sql` by sqlglot."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose {', '.join(ENGINES)}")
    sql = check_sql(check, flavour, table, as_of, columns)
    import sqlglot

    out = sqlglot.transpile(sql, read="duckdb", write=_DIALECT[engine], pretty=True)
    return ";\n".join(out)


def header(engine: str, check: str, flavour: str, as_of: date) -> str:
    return (
        f"-- tokenfuse detect: {check} ({flavour}, {engine}), as of {as_of.isoformat()}.\n"
        f"-- recent = days -1..-{RECENT_DAYS}; baseline = days -{BASELINE_LAST_BACK}..-{BASELINE_FIRST_BACK}; "
        f"days without usage count as $0;\n-- flag when recent > mean + {SIGMA} * max(sigma, "
        f"{SIGMA_FLOOR_FRACTION} * mean) and mean > ${MIN_BASELINE_USD}/day."
    )


Findings = dict[str, list[dict[str, object]]]


def _columns_of(paths: list[str]) -> tuple[str, list[str], str]:
    """(flavour, columns, format) of the export files, read the way ``load`` reads them."""
    from tokenfuse.billing import load as ld

    con = ld.connect()
    cols: dict[str, str] = {}
    fmts = set()
    for f in paths:
        fmt = ld._sniff_format(f)
        fmts.add(fmt)
        for low, (name, _typ) in ld._describe(con, fmt, f).items():
            cols.setdefault(low, name)
    con.close()
    flavour = ld.detect_flavour(cols)
    if flavour is None:
        from tokenfuse.billing.errors import BillingInputError

        raise BillingInputError(f"{paths[0]}: not a FOCUS or CUR 2.0 billing export")
    if len(fmts) > 1:
        from tokenfuse.billing.errors import BillingInputError

        raise BillingInputError("--engine reads one format at a time; pass the CSV and the Parquet files separately")
    return flavour, list(cols.values()), fmts.pop()


def run(engine: str, paths: list[str], as_of: date, checks: Collection[str] = CHECKS) -> Findings:
    """Run the checks on ``engine`` over export files (``duckdb`` in-process, ``spark`` in a local session)."""
    from tokenfuse.billing.load import expand_paths

    files = expand_paths(paths)
    flavour, columns, fmt = _columns_of(files)
    if engine == "duckdb":
        return _run_duckdb(files, fmt, flavour, columns, as_of, checks)
    if engine == "spark":
        return _run_spark(files, fmt, flavour, columns, as_of, checks)
    raise ValueError(f"--engine {engine} runs only duckdb or spark here; print the SQL for the others with --print-sql")


def _run_duckdb(
    files: list[str], fmt: str, flavour: str, columns: list[str], as_of: date, checks: Collection[str]
) -> Findings:
    from tokenfuse.billing import load as ld

    con = ld.connect()
    reader = ld._reader(fmt, files).replace("all_varchar=true", "all_varchar=true")
    con.execute(f"CREATE VIEW billing_export AS SELECT * FROM {reader}")
    out: Findings = {}
    for check in checks:
        cur = con.execute(check_sql(check, flavour, "billing_export", as_of, columns))
        names = [d[0] for d in cur.description or []]
        out[check] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    con.close()
    return out


def spark_unavailable() -> str | None:
    """Why a local Spark session cannot start here, or None."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'tokenfuse[warehouse]')"
    if shutil.which("java") is None and not __import__("os").environ.get("JAVA_HOME"):
        return "no Java runtime (java not on PATH, JAVA_HOME unset); install one, e.g. default-jre-headless"
    return None


def spark_session() -> object:
    why = spark_unavailable()
    if why is not None:
        from tokenfuse.billing.errors import BillingInputError

        raise BillingInputError(f"--engine spark cannot start a local Spark session: {why}")
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master("local[2]")
        .appName("tokenfuse-detect")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )


def _run_spark(
    files: list[str], fmt: str, flavour: str, columns: list[str], as_of: date, checks: Collection[str],
    session: object | None = None,
) -> Findings:
    spark: object = session or spark_session()
    reader = spark.read  # type: ignore[attr-defined]
    if fmt == "parquet":
        df = reader.parquet(*files)
    else:
        # Every value as a string, as `load` reads CSV; gzip is read by extension.
        df = reader.option("header", True).option("nullValue", "NULL").csv(files)
    df.createOrReplaceTempView("billing_export")
    out: Findings = {}
    for check in checks:
        rows = spark.sql(render("spark", check, flavour, "billing_export", as_of, columns)).collect()  # type: ignore[attr-defined]
        out[check] = [r.asDict() for r in rows]
    return out


def _num(v: object, places: str) -> str:
    from decimal import Decimal

    return str(Decimal(str(v)).quantize(Decimal(places))) if v is not None else "null"


def summarise(found: Findings) -> dict[str, list[tuple[str, ...]]]:
    """The findings of a run, engine-independent: what is flagged and the figures behind it
    (dollars to the cent, tokens to the token). Two engines agree when these are equal."""
    out: dict[str, list[tuple[str, ...]]] = {}
    if "runaway" in found:
        out["runaway"] = sorted(
            (str(r["account"]), _num(r["recent_avg"], "0.01"), _num(r["baseline_avg"], "0.01"))
            for r in found["runaway"] if r["flagged"]
        )
    if "caching" in found:
        out["cache_miss"] = sorted(
            (str(r["account"]), str(r["model"]), _num(r["uncached_input_tokens"], "1"), _num(r["cache_read_tokens"], "1"))
            for r in found["caching"] if r["cache_miss"]
        )
    if "budget" in found:
        out["budget"] = sorted(
            (str(r["account"]), str(r["period"]), _num(r["monthly_budget_usd"], "0.01"), str(r["excluded_days"]))
            for r in found["budget"]
        )
    if "reconcile" in found:
        out["reconcile"] = sorted(
            (str(r["day"]), str(r["account"]), str(r["model"]), str(r["token_class"]), _num(r["tokens"], "1"),
             _num(r["cost"], "0.01"))
            for r in found["reconcile"]
        )
    return out
