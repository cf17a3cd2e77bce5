"""The detection SQL, rendered for DuckDB, Athena or Trino.

``daily_sql`` is what ``detect`` itself runs on the loaded ``bill`` table (one
row per account x day on a complete calendar, days without usage as $0).
``warehouse_sql`` wraps the same steps around a raw export table so that an
export too large for a laptop can be checked where it lives (``--print-sql``):
normalisation, token-row classification (the patterns from ``usagetypes``),
the zero-filled calendar, and the runaway statistics with the flag.
"""

from __future__ import annotations

from datetime import date, timedelta

from tokenfuse.billing.usagetypes import (
    BEDROCK_SERVICES,
    COMPUTE_SERVICES,
    INFERENCE_OPERATION_PATTERN,
    LLM_API_SERVICES,
    MARKETPLACE_PATTERN,
    TOKEN_CLASS_PATTERNS,
)

DIALECTS: tuple[str, ...] = ("duckdb", "athena", "trino")
RECENT_DAYS = 3
BASELINE_FIRST_BACK = 8  # days before as_of; days -7..-4 are a guard gap
BASELINE_LAST_BACK = 30
SIGMA = 2
MIN_BASELINE_USD = 1
# sigma is floored at this fraction of the mean: a perfectly flat baseline must
# not turn a one-cent rise into a "runaway".
SIGMA_FLOOR_FRACTION = "0.10"

CLASS_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_cost", ("input_uncached",)),
    ("cache_read_cost", ("cache_read",)),
    ("cache_write_cost", ("cache_write", "cache_write_1h")),
    ("output_cost", ("output",)),
)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _date(d: date) -> str:
    return f"DATE '{d.isoformat()}'"


def _calendar(dialect: str, start: date, end: date) -> str:
    if dialect == "duckdb":
        return (
            f"SELECT CAST(range AS DATE) AS day FROM range({_date(start)}, "
            f"{_date(end + timedelta(days=1))}, INTERVAL 1 DAY)"
        )
    return f"SELECT day FROM UNNEST(sequence({_date(start)}, {_date(end)}, INTERVAL '1' DAY)) AS t(day)"


def _daily_body(dialect: str, source: str, as_of: date, first_day: date) -> str:
    start = max(first_day, as_of - timedelta(days=BASELINE_LAST_BACK))
    end = as_of - timedelta(days=1)
    inf = "kind = 'inference' AND is_usage"
    cls_cols = ",\n           ".join(
        f"sum(CASE WHEN {inf} AND token_class IN ({', '.join(_lit(c) for c in classes)}) THEN cost ELSE 0 END) AS {name}"
        for name, classes in CLASS_COLUMNS
    )
    filled_cls = ", ".join(f"coalesce(x.{name}, 0) AS {name}" for name, _ in CLASS_COLUMNS)
    return f"""daily AS (
    SELECT account, day,
           sum(CASE WHEN {inf} THEN cost ELSE 0 END) AS inference_cost,
           {cls_cols},
           sum(CASE WHEN kind = 'compute' THEN cost ELSE 0 END) AS compute_cost
    FROM {source}
    WHERE day >= {_date(start)} AND day <= {_date(end)}
    GROUP BY account, day
),
accounts AS (SELECT DISTINCT account FROM daily),
calendar AS ({_calendar(dialect, start, end)}),
filled AS (
    SELECT a.account, c.day, date_diff('day', c.day, {_date(as_of)}) AS back,
           coalesce(x.inference_cost, 0) AS inference_cost, {filled_cls},
           coalesce(x.compute_cost, 0) AS compute_cost
    FROM accounts a CROSS JOIN calendar c
    LEFT JOIN daily x ON x.account = a.account AND x.day = c.day
)"""


def daily_sql(as_of: date, first_day: date) -> str:
    """Rows (account, day, back, inference_cost, <class costs>, compute_cost) over the detection window."""
    return f"WITH {_daily_body('duckdb', 'bill', as_of, first_day)}\nSELECT * FROM filled ORDER BY account, day"


def window(as_of: date, first_day: date) -> tuple[date, date]:
    """First and last day of the detection window (``daily_sql``'s calendar)."""
    return max(first_day, as_of - timedelta(days=BASELINE_LAST_BACK)), as_of - timedelta(days=1)


def account_stats_sql(as_of: date, first_day: date) -> str:
    """One row per account: its daily inference costs over the window (oldest first) and, per token
    class and for compute, the sums over the recent and the baseline days.

    The per-day inference costs stay a list because the standard deviation and the billing-lag
    test are computed in ``Decimal`` in Python; everything else is summed here, so that only a
    thirtieth of the values cross into Python (at 100 M rows the fetch was most of ``detect``).
    """
    recent = f"back BETWEEN 1 AND {RECENT_DAYS}"
    base = f"back BETWEEN {BASELINE_FIRST_BACK} AND {BASELINE_LAST_BACK}"
    sums = ",\n           ".join(
        f"sum({name}) FILTER (WHERE {recent}) AS recent_{name}, sum({name}) FILTER (WHERE {base}) AS base_{name}"
        for name in [n for n, _ in CLASS_COLUMNS] + ["compute_cost"]
    )
    return f"""WITH {_daily_body('duckdb', 'bill', as_of, first_day)}
SELECT account, list(inference_cost ORDER BY day) AS costs,
           {sums}
FROM filled GROUP BY account ORDER BY account"""


def account_days_sql(as_of: date, first_day: date, column: str) -> str:
    """Rows (account, list of ``column`` per day, oldest first) over the window, for accounts ``?``."""
    return f"""WITH {_daily_body('duckdb', 'bill', as_of, first_day)}
SELECT account, list({column} ORDER BY day) FROM filled WHERE list_contains(?, account) GROUP BY account"""


_NORMALISE: dict[str, dict[str, str]] = {
    "cur-2.0": {
        "day": "CAST(line_item_usage_start_date AS DATE)",
        "account": "line_item_usage_account_id",
        "service": "lower(coalesce(product_servicecode, line_item_product_code))",
        "usage_type": "lower(line_item_usage_type)",
        "charge": "lower(line_item_line_item_type)",
        "operation": "lower(line_item_operation)",
        "cost": "line_item_unblended_cost",
    },
    "focus-1.0": {
        "day": "CAST(ChargePeriodStart AS DATE)",
        "account": "coalesce(SubAccountId, BillingAccountId)",
        "service": "lower(coalesce(x_ServiceCode, ServiceName))",
        "usage_type": "lower(x_UsageType)",
        "charge": "lower(ChargeCategory)",
        "operation": "lower(x_Operation)",
        "cost": "BilledCost",
    },
    "focus-1.2": {
        "day": "CAST(ChargePeriodStart AS DATE)",
        "account": "coalesce(SubAccountId, BillingAccountId)",
        "service": "lower(coalesce(x_ServiceCode, ServiceName))",
        "usage_type": "lower(SkuMeter)",
        "charge": "lower(ChargeCategory)",
        "operation": "lower(x_Operation)",
        "cost": "BilledCost",
    },
}


def _regex(dialect: str, expr: str, pattern: str) -> str:
    fn = "regexp_matches" if dialect == "duckdb" else "regexp_like"
    return f"{fn}({expr}, {_lit(pattern)})"


def warehouse_sql(dialect: str, flavour: str, table: str, as_of: date, first_day: date) -> str:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; choose {', '.join(DIALECTS)}")
    n = _NORMALISE[flavour]
    cls_case = "CASE " + " ".join(
        f"WHEN {_regex(dialect, 'usage_type', p)} THEN {_lit(c)}" for c, p in TOKEN_CLASS_PATTERNS
    ) + " END"
    bedrock = ", ".join(_lit(s) for s in sorted(BEDROCK_SERVICES))
    compute = ", ".join(_lit(s) for s in sorted(COMPUTE_SERVICES))
    llm = ", ".join(_lit(s) for s in sorted(LLM_API_SERVICES))
    mp = _lit("%" + MARKETPLACE_PATTERN + "%")
    recent = f"back BETWEEN 1 AND {RECENT_DAYS}"
    base = f"back BETWEEN {BASELINE_FIRST_BACK} AND {BASELINE_LAST_BACK}"
    cls_stats = ",\n           ".join(
        f"avg(CASE WHEN {recent} THEN {name} END) AS recent_{name}, avg(CASE WHEN {base} THEN {name} END) AS baseline_{name}"
        for name, _ in CLASS_COLUMNS
    )
    return f"""-- tokenfuse detect: runaway Bedrock inference per account ({flavour}, {dialect}).
-- recent = mean of the {RECENT_DAYS} complete days before as_of; baseline = days -{BASELINE_LAST_BACK}..-{BASELINE_FIRST_BACK};
-- days without usage count as $0; flag when recent > mean + {SIGMA} * max(sigma, {SIGMA_FLOOR_FRACTION} * mean) and mean > ${MIN_BASELINE_USD}/day.
WITH raw AS (
    SELECT {n['day']} AS day, {n['account']} AS account, {n['service']} AS service,
           {n['usage_type']} AS usage_type, {n['operation']} AS operation, {n['charge']} AS charge, CAST({n['cost']} AS DECIMAL(38,12)) AS cost
    FROM {table}
    WHERE {n['day']} >= {_date(max(first_day, as_of - timedelta(days=BASELINE_LAST_BACK)))}
      AND {n['day']} < {_date(as_of)}
),
typed AS (
    SELECT day, account, cost, {cls_case} AS token_class,
           replace(charge, ' ', '') IN ('usage', 'discountedusage', 'savingsplancoveredusage') AS is_usage, service, usage_type,
           operation
    FROM raw
),
classified AS (
    SELECT day, account, cost, token_class, is_usage,
           CASE WHEN token_class IS NOT NULL AND (service IN ({bedrock}) OR service IN ({llm}) OR usage_type LIKE {mp})
                     THEN 'inference'
                WHEN service IN ({bedrock}) AND {_regex(dialect, "coalesce(operation, '')", INFERENCE_OPERATION_PATTERN)}
                     THEN 'inference'
                WHEN service IN ({compute}) THEN 'compute' ELSE 'other' END AS kind
    FROM typed
),
{_daily_body(dialect, 'classified', as_of, first_day)},
stats AS (
    SELECT account,
           avg(CASE WHEN {recent} THEN inference_cost END) AS recent_avg,
           avg(CASE WHEN {base} THEN inference_cost END) AS baseline_avg,
           stddev_samp(CASE WHEN {base} THEN inference_cost END) AS baseline_stddev,
           {cls_stats},
           avg(CASE WHEN {recent} THEN compute_cost END) AS recent_compute,
           avg(CASE WHEN {base} THEN compute_cost END) AS baseline_compute
    FROM filled
    GROUP BY account
)
SELECT *,
       recent_avg / nullif(baseline_avg, 0) AS spike_ratio,
       (recent_avg > baseline_avg + {SIGMA} * greatest(coalesce(baseline_stddev, 0), {SIGMA_FLOOR_FRACTION} * baseline_avg)
        AND baseline_avg > {MIN_BASELINE_USD}) AS flagged
FROM stats
ORDER BY flagged DESC, spike_ratio DESC
"""
