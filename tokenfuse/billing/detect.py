"""Runaway inference, caching health and budget advice over a loaded export.

The statistics follow the textbook check (3-day mean against a baseline mean and
2 sigma) with the corrections documented in docs/detection.md: days without usage
count as $0, the incomplete current day is never used, token rows are matched in
both usage-type generations, and sigma is floored so a flat baseline cannot flag
a one-cent rise. All money is Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.load import Export
from tokenfuse.billing.sql import (
    BASELINE_FIRST_BACK,
    BASELINE_LAST_BACK,
    CLASS_COLUMNS,
    MIN_BASELINE_USD,
    RECENT_DAYS,
    SIGMA,
    SIGMA_FLOOR_FRACTION,
    account_days_sql,
    account_stats_sql,
    window,
)
from tokenfuse.billing.usagetypes import model_supports_caching

MIN_BASELINE_DAYS = 7
# Driver: the token class whose dollars carry at least this share of the rise.
DRIVER_SHARE = Decimal("0.6")
# Compute is "flat" when its recent mean is within this fraction of its baseline.
COMPUTE_FLAT_TOLERANCE = Decimal("0.25")
# Caching: flag when reads are under this fraction of uncached input...
CACHE_READ_RATIO = Decimal("0.5")
# ...on at least this many uncached input tokens in the window...
CACHE_MIN_INPUT_TOKENS = Decimal(1_000_000)
# ...and estimate savings as if this share of all input had been served from cache.
CACHE_TARGET_HIT = Decimal("0.8")
DEV_TEST_DAILY_CAP = Decimal(100)
_ZERO = Decimal(0)

DRIVER_CAUSE = {
    "input": "input tokens rose: context accumulation (a loop re-sending a growing conversation or document)",
    "output": "output tokens rose: verbose reasoning or generation (raised max_tokens, thinking budgets, retries)",
    "cache_write": "cache writes rose without reads: caching misconfigured (cache prefix changes on every call)",
    "mixed": "all token classes rose together: more calls of the same shape (traffic growth or a retry storm)",
    "billing_lag": "a billing-lag lump, not a usage change: days billed nothing, then one day billed them all at once; "
    "run `tokenfuse reconcile` against the gateway ledger to confirm",
}
# Billing-lag lump: the baseline bills on at least this share of its days...
LAG_BASELINE_ACTIVE = Decimal("0.8")
# ...and the lump is at most this many times (missing days + 1) x the baseline mean.
LAG_LUMP_TOLERANCE = Decimal("1.5")



@dataclass(slots=True)
class DaySeries:
    account: str
    days: list[date]
    cost: list[Decimal]
    compute: list[Decimal]


@dataclass(slots=True)
class Runaway:
    account: str
    recent_avg: Decimal
    baseline_avg: Decimal
    baseline_stddev: Decimal
    baseline_days: int
    spike_ratio: Decimal | None
    sigma_distance: Decimal
    threshold: Decimal
    driver: str
    compute_flat: bool
    recent_compute_avg: Decimal
    baseline_compute_avg: Decimal
    class_delta: dict[str, Decimal]
    days: list[date]
    flagged_days: list[date]
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "runaway_inference",
            "account": self.account,
            "days": [d.isoformat() for d in self.days],
            "flagged_days": [d.isoformat() for d in self.flagged_days],
            "recent_avg_daily_cost": _money(self.recent_avg),
            "baseline_avg_daily_cost": _money(self.baseline_avg),
            "baseline_stddev": _money(self.baseline_stddev),
            "baseline_days": self.baseline_days,
            "threshold_daily_cost": _money(self.threshold),
            "spike_ratio": None if self.spike_ratio is None else _ratio(self.spike_ratio),
            "sigma_distance": _ratio(self.sigma_distance),
            "driver": self.driver,
            "likely_cause": DRIVER_CAUSE[self.driver],
            "compute_flat": self.compute_flat,
            "recent_compute_avg_daily_cost": _money(self.recent_compute_avg),
            "baseline_compute_avg_daily_cost": _money(self.baseline_compute_avg),
            "increase_by_class": {k: _money(v) for k, v in self.class_delta.items()},
        }


@dataclass(slots=True)
class CacheMiss:
    account: str
    model: str
    model_label: str
    uncached_input_tokens: Decimal
    cache_read_tokens: Decimal
    cache_write_tokens: Decimal
    uncached_input_usd: Decimal
    cache_read_usd: Decimal
    cache_write_usd: Decimal
    input_price_per_mtok: Decimal
    cache_read_price_per_mtok: Decimal
    price_source: str
    wasted_usd: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "cache_miss",
            "account": self.account,
            "model": self.model,
            "model_label": self.model_label,
            "uncached_input_tokens": int(self.uncached_input_tokens),
            "cache_read_tokens": int(self.cache_read_tokens),
            "cache_write_tokens": int(self.cache_write_tokens),
            "uncached_input_usd": _money(self.uncached_input_usd),
            "cache_read_usd": _money(self.cache_read_usd),
            "cache_write_usd": _money(self.cache_write_usd),
            "input_price_per_mtok": _money(self.input_price_per_mtok),
            "cache_read_price_per_mtok": _money(self.cache_read_price_per_mtok),
            "price_source": self.price_source,
            "wasted_usd": _money(self.wasted_usd),
        }


@dataclass(slots=True)
class BudgetAdvice:
    account: str
    period: str
    bedrock_spend_usd: Decimal
    monthly_budget_usd: Decimal
    dev_test_monthly_budget_usd: Decimal
    excluded_days: list[date] = field(default_factory=list)
    excluded_usd: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "budget_advice",
            "account": self.account,
            "period": self.period,
            "bedrock_spend_usd": _money(self.bedrock_spend_usd),
            "monthly_budget_usd": _money(self.monthly_budget_usd),
            "dev_test_monthly_budget_usd": _money(self.dev_test_monthly_budget_usd),
            "excluded_days": [d.isoformat() for d in self.excluded_days],
            "excluded_usd": _money(self.excluded_usd),
        }


@dataclass(slots=True)
class Detection:
    as_of: date
    runaways: list[Runaway]  # every account evaluated; .flagged marks findings
    cache_misses: list[CacheMiss]
    budgets: list[BudgetAdvice]
    cache: list[CacheStat] = field(default_factory=list)
    series: dict[str, DaySeries] = field(default_factory=dict)  # flagged accounts only (the report charts them)
    notes: list[str] = field(default_factory=list)
    # Set when the export holds no AI inference usage rows: the one answer to give.
    nothing_to_analyse: str | None = None

    @property
    def flagged(self) -> list[Runaway]:
        return [r for r in self.runaways if r.flagged]

    def findings_json(self) -> list[dict[str, Any]]:
        out = [r.to_json() for r in self.flagged]
        out += [c.to_json() for c in self.cache_misses]
        out += [b.to_json() for b in self.budgets]
        return out


def _money(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.000001"))


def _ratio(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.0001"))


def resolve_as_of(exp: Export, as_of: date | None) -> date:
    """The first day *not* analysed: given, else the day after the last complete day.

    A day after the export's data is refused: it would count as $0 and fake a drop (or hide a spike).
    """
    complete = exp.last_complete_day or (exp.last_day if exp.last_day_complete else exp.last_day - timedelta(days=1))
    if as_of is None:
        return complete + timedelta(days=1)
    if as_of > exp.last_day + timedelta(days=1):
        raise BillingInputError(
            f"--as-of {as_of.isoformat()} is after the export's data: its last complete day is "
            f"{complete.isoformat()} (use --as-of {(complete + timedelta(days=1)).isoformat()} or earlier, "
            "or add the newer export files); the missing days would count as $0"
        )
    return as_of


def _mean(xs: list[Decimal]) -> Decimal:
    return sum(xs, _ZERO) / len(xs) if xs else _ZERO


def _stddev(xs: list[Decimal]) -> Decimal:
    if len(xs) < 2:
        return _ZERO
    m = _mean(xs)
    var = sum(((x - m) ** 2 for x in xs), _ZERO) / (len(xs) - 1)
    return var.sqrt()


def _driver(delta: dict[str, Decimal]) -> str:
    groups = {
        "input": delta["input_cost"] + delta["cache_read_cost"],
        "output": delta["output_cost"],
        "cache_write": delta["cache_write_cost"],
    }
    rise = sum((v for v in groups.values() if v > 0), _ZERO)
    if rise <= 0:
        return "mixed"
    for name, v in groups.items():
        if v / rise >= DRIVER_SHARE:
            return name
    return "mixed"


def runaway(exp: Export, as_of: date) -> tuple[list[Runaway], dict[str, DaySeries]]:
    """Every account judged; the day series are returned for the flagged accounts (the report draws them)."""
    start, end = window(as_of, exp.first_day)
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    backs = [(as_of - d).days for d in days]
    recent_i = [i for i, b in enumerate(backs) if 1 <= b <= RECENT_DAYS]
    base_i = [i for i, b in enumerate(backs) if BASELINE_FIRST_BACK <= b <= BASELINE_LAST_BACK]
    if len(recent_i) < RECENT_DAYS or len(base_i) < MIN_BASELINE_DAYS:
        return [], {}
    cur = exp.con.execute(account_stats_sql(as_of, exp.first_day))
    names = [d[0] for d in cur.description or []]
    floor_frac = Decimal(SIGMA_FLOOR_FRACTION)
    n_recent, n_base = len(recent_i), len(base_i)
    out: list[Runaway] = []
    for row in cur.fetchall():
        r = dict(zip(names, row, strict=True))
        account, costs = r["account"], r["costs"]
        recent = [costs[i] for i in recent_i]
        b_vals = [costs[i] for i in base_i]
        r_avg = _mean(recent)
        b_avg = _mean(b_vals)
        sd = _stddev(b_vals)
        sd_eff = max(sd, b_avg * floor_frac)
        threshold = b_avg + SIGMA * sd_eff
        flagged = b_avg > MIN_BASELINE_USD and r_avg > threshold
        dist = (r_avg - b_avg) / sd_eff if sd_eff > 0 else _ZERO
        # The sums are exact (DECIMAL in SQL), so sum / n is the mean Python would compute.
        delta = {
            n: (r[f"recent_{n}"] or _ZERO) / n_recent - (r[f"base_{n}"] or _ZERO) / n_base for n, _ in CLASS_COLUMNS
        }
        driver = _driver(delta)
        by_back = dict(zip(backs, costs, strict=True))
        if flagged and _is_lag_lump(by_back, b_vals, b_avg, threshold):
            driver = "billing_lag"
        rc = (r["recent_compute_cost"] or _ZERO) / n_recent
        bc = (r["base_compute_cost"] or _ZERO) / n_base
        flat = (rc == bc) if bc == 0 else abs(rc / bc - 1) <= COMPUTE_FLAT_TOLERANCE
        out.append(
            Runaway(
                account=account,
                recent_avg=r_avg,
                baseline_avg=b_avg,
                baseline_stddev=sd,
                baseline_days=n_base,
                spike_ratio=(r_avg / b_avg) if b_avg > 0 else None,
                sigma_distance=dist,
                threshold=threshold,
                driver=driver,
                compute_flat=flat,
                recent_compute_avg=rc,
                baseline_compute_avg=bc,
                class_delta={n.removesuffix("_cost"): v for n, v in delta.items()},
                days=[days[i] for i in recent_i],
                flagged_days=[days[i] for i in recent_i if costs[i] > threshold],
                flagged=flagged,
            )
        )
    out.sort(key=lambda r: (not r.flagged, -(r.spike_ratio or _ZERO)))
    series: dict[str, DaySeries] = {}
    flagged_accounts = sorted(r.account for r in out if r.flagged)
    if flagged_accounts:
        costs_of = {a: c for a, c in exp.con.execute(
            account_days_sql(as_of, exp.first_day, "inference_cost"), [flagged_accounts]).fetchall()}
        compute_of = {a: c for a, c in exp.con.execute(
            account_days_sql(as_of, exp.first_day, "compute_cost"), [flagged_accounts]).fetchall()}
        for a in flagged_accounts:
            series[a] = DaySeries(a, list(days), list(costs_of[a]), list(compute_of[a]))
    return out, series


def _is_lag_lump(by_back: dict[int, Decimal], base: list[Decimal], b_avg: Decimal, threshold: Decimal) -> bool:
    """One recent day over the threshold right after days that billed nothing, carrying about those days' usage.

    The bill charged late, it did not charge more: the days before the lump are $0 on an
    account that bills nearly every day, and the lump is no bigger than the missing days
    plus its own at the baseline rate.
    """
    if not base or Decimal(sum(1 for v in base if v > 0)) / len(base) < LAG_BASELINE_ACTIVE or b_avg <= 0:
        return False
    over = [b for b in range(1, RECENT_DAYS + 1) if by_back.get(b, _ZERO) > threshold]
    if len(over) != 1:
        return False
    lump = over[0]
    gap = 0
    while by_back.get(lump + gap + 1) == 0 and lump + gap + 1 < BASELINE_FIRST_BACK:
        gap += 1
    return gap >= 1 and by_back[lump] <= (gap + 1) * b_avg * LAG_LUMP_TOLERANCE


def _price_book_rates(model: str, model_label: str) -> tuple[Decimal, Decimal] | None:
    price = None
    try:
        from tokenfuse.pricing import PriceBook

        book = PriceBook.default()
        for name in (model.replace(".", "-"), model_label):
            price = book.lookup(name)
            if price is not None:
                break
    except Exception:  # the price book is optional here; the export's own prices come first
        return None
    if price is None or getattr(price, "input", None) is None:
        return None
    read = getattr(price, "cache_read", None)
    return Decimal(price.input), Decimal(read) if read is not None else Decimal(price.input) / 10


@dataclass(slots=True)
class CacheStat:
    """One account x model: where its input tokens and dollars went."""

    account: str
    model: str
    model_label: str
    supports_caching: bool
    tokens: dict[str, Decimal]  # input_uncached, cache_read, cache_write (5m + 1h)
    usd: dict[str, Decimal]

    @property
    def read_ratio(self) -> Decimal | None:
        unc = self.tokens["input_uncached"]
        return self.tokens["cache_read"] / unc if unc > 0 else None

    def to_json(self) -> dict[str, Any]:
        ratio = self.read_ratio
        return {
            "account": self.account,
            "model": self.model,
            "model_label": self.model_label,
            "supports_caching": self.supports_caching,
            "uncached_input_tokens": int(self.tokens["input_uncached"]),
            "cache_read_tokens": int(self.tokens["cache_read"]),
            "cache_write_tokens": int(self.tokens["cache_write"]),
            "uncached_input_usd": _money(self.usd["input_uncached"]),
            "cache_read_usd": _money(self.usd["cache_read"]),
            "cache_write_usd": _money(self.usd["cache_write"]),
            "cache_read_per_uncached_token": None if ratio is None else _ratio(ratio),
        }


def cache_stats(exp: Export, as_of: date) -> list[CacheStat]:
    start = max(exp.first_day, as_of - timedelta(days=BASELINE_LAST_BACK))
    rows = exp.con.execute(
        """
        SELECT account, model, any_value(model_label) AS label,
               CASE WHEN token_class = 'cache_write_1h' THEN 'cache_write' ELSE token_class END AS cls,
               sum(tokens), sum(cost)
        FROM bill
        WHERE kind = 'inference' AND is_usage AND model IS NOT NULL
          AND token_class IN ('input_uncached', 'cache_read', 'cache_write', 'cache_write_1h')
          AND day >= ? AND day < ?
        GROUP BY account, model, cls
        """,
        [start, as_of],
    ).fetchall()
    stats: dict[tuple[str, str], CacheStat] = {}
    for account, model, label, cls, tokens, cost in rows:
        st = stats.get((account, model))
        if st is None:
            zero = {c: _ZERO for c in ("input_uncached", "cache_read", "cache_write")}
            st = stats[(account, model)] = CacheStat(
                account, model, label or model, model_supports_caching(model), dict(zero), dict(zero)
            )
        st.tokens[cls] += Decimal(tokens or 0)
        st.usd[cls] += Decimal(cost or 0)
    for st in stats.values():
        # A model the provider bills cache reads or writes for supports caching, whatever its name.
        st.supports_caching = st.supports_caching or st.tokens["cache_read"] > 0 or st.tokens["cache_write"] > 0
    return sorted(stats.values(), key=lambda c: (-c.usd["input_uncached"], c.account, c.model))


def cache_health(exp: Export, as_of: date, stats: list[CacheStat] | None = None) -> list[CacheMiss]:
    """The account x model pairs that read far less from the cache than they could,
    from :func:`cache_stats` (pass them when already computed)."""
    if stats is None:
        stats = cache_stats(exp, as_of)
    out: list[CacheMiss] = []
    mtok = Decimal(1_000_000)
    for st in sorted(stats, key=lambda c: (c.account, c.model)):
        if not st.supports_caching:
            continue
        unc_t, read_t = st.tokens["input_uncached"], st.tokens["cache_read"]
        unc_c, read_c = st.usd["input_uncached"], st.usd["cache_read"]
        if unc_t < CACHE_MIN_INPUT_TOKENS or read_t >= unc_t * CACHE_READ_RATIO:
            continue
        p_in = unc_c / unc_t * mtok
        source = "export"
        if read_t > 0:
            p_read = read_c / read_t * mtok
        else:
            book = _price_book_rates(st.model, st.model_label)
            if book is not None:
                p_read, source = book[1], "price book"
            else:
                p_read, source = p_in / 10, "export input price, cache read assumed at 10%"
        extra = max(_ZERO, CACHE_TARGET_HIT * (unc_t + read_t) - read_t)
        wasted = extra * (p_in - p_read) / mtok
        out.append(
            CacheMiss(
                st.account, st.model, st.model_label, unc_t, read_t, st.tokens["cache_write"], unc_c, read_c,
                st.usd["cache_write"], p_in, p_read, source, max(wasted, _ZERO),
            )
        )
    out.sort(key=lambda c: -c.wasted_usd)
    return out


def budget_advice(exp: Export, as_of: date, flagged: dict[str, set[date]] | None = None) -> list[BudgetAdvice]:
    """2x last month's AI inference spend, from the days that were not an incident.

    ``flagged`` maps an account to the days to leave out (for a flagged account: every
    day of the window above its runaway threshold); the rest is scaled back to the whole
    window. A budget set from a month that includes the incident would allow the incident.
    """
    month_end = as_of.replace(day=1) - timedelta(days=1)
    month_start = month_end.replace(day=1)
    if exp.first_day <= month_start:
        start, end, period = month_start, month_end, month_start.strftime("%Y-%m")
    else:
        start, end = max(exp.first_day, as_of - timedelta(days=30)), as_of - timedelta(days=1)
        period = f"{start.isoformat()}..{end.isoformat()}"
    n_days = (end - start).days + 1
    # Spend per account summed in SQL (exact); the days of a flagged account are fetched only to leave some out.
    spend_of = exp.con.execute(
        "SELECT account, sum(cost) FROM bill WHERE kind IN ('inference', 'bedrock') AND day >= ? AND day <= ? "
        "GROUP BY account ORDER BY account",
        [start, end],
    ).fetchall()
    excluded_of = {a: {d for d in ds if start <= d <= end} for a, ds in (flagged or {}).items()}
    excluded_of = {a: ds for a, ds in excluded_of.items() if ds}
    per_day: dict[str, dict[date, Decimal]] = defaultdict(dict)
    if excluded_of:
        for account, day, cost in exp.con.execute(
            "SELECT account, day, sum(cost) FROM bill WHERE kind IN ('inference', 'bedrock') AND day >= ? AND day <= ? "
            "AND list_contains(?, account) GROUP BY account, day",
            [start, end, sorted(excluded_of)],
        ).fetchall():
            per_day[account][day] = Decimal(cost)
    out = []
    for account, total in spend_of:
        spend = Decimal(total)
        if spend <= 0:
            continue
        excluded = excluded_of.get(account, set())
        excluded_usd = sum((per_day[account].get(d, _ZERO) for d in excluded), _ZERO)
        kept_days = n_days - len(excluded)
        usual = (spend - excluded_usd) * n_days / kept_days if kept_days > 0 else spend
        # A partial window is scaled to a 30-day month before doubling.
        monthly = usual * 30 / n_days if period.count("..") else usual
        budget = 2 * monthly
        out.append(
            BudgetAdvice(account, period, spend, budget, min(budget, DEV_TEST_DAILY_CAP * 30), sorted(excluded),
                         excluded_usd)
        )
    return out


def nothing_to_analyse(exp: Export) -> str | None:
    """The plain statement for an export without AI inference usage rows, or None."""
    if exp.con.execute("SELECT 1 FROM bill WHERE kind = 'inference' LIMIT 1").fetchone():
        return None
    services = ", ".join(list(exp.services)[:8]) + (", ..." if len(exp.services) > 8 else "")
    return (
        f"this export has no AI inference usage rows tokenfuse can analyse ({exp.rows:,} rows, services: {services}); "
        "runaway inference, caching health and budget advice need token usage rows of an AI inference service "
        "(Amazon Bedrock, Azure OpenAI / Foundry Models, Vertex AI / Gemini, or a model sold through a cloud marketplace)"
    )


def detect(exp: Export, as_of: date | None = None) -> Detection:
    day = resolve_as_of(exp, as_of)
    notes = list(exp.notes)
    if as_of is not None and not exp.last_day_complete and day > exp.last_day:
        notes.append(f"--as-of {day.isoformat()} includes {exp.last_day.isoformat()}, which is incomplete")
    if (day - exp.first_day).days < BASELINE_LAST_BACK:
        notes.append(
            f"the export starts {exp.first_day.isoformat()}, fewer than {BASELINE_LAST_BACK} days before "
            f"{day.isoformat()}; the baseline is shorter"
        )
    runaways, series = runaway(exp, day)
    stats = cache_stats(exp, day)
    flagged = {
        r.account: set(r.flagged_days)
        | {d for d, v in zip(series[r.account].days, series[r.account].cost, strict=True) if v > r.threshold}
        for r in runaways
        if r.flagged
    }
    return Detection(
        day, runaways, cache_health(exp, day, stats), budget_advice(exp, day, flagged), stats, series, notes,
        nothing_to_analyse(exp),
    )
