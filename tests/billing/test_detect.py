from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tokenfuse.billing.detect import Detection, detect
from tokenfuse.billing.load import load
from tokenfuse.billing.sample import Manifest, generate, plan

HEADER = "BilledCost,BillingCurrency,ChargePeriodStart,ChargeCategory,SubAccountId,x_ServiceCode,x_UsageType,x_Operation,PricingQuantity,PricingUnit"
SUFFIX = {
    "input_uncached": "input-tokens",
    "output": "output-tokens",
    "cache_read": "cache-read-input-token-count",
    "cache_write": "cache-write-input-token-count",
}
START = date(2026, 8, 1)


def write_days(path: Path, accounts: dict[str, list[dict[str, Decimal]]], compute: dict[str, list[Decimal]] | None = None) -> Path:
    """One daily row per account x day x class; {} for a day with no rows at all."""
    lines = [HEADER]
    for acct, days in accounts.items():
        for i, classes in enumerate(days):
            day = START + timedelta(days=i)
            for cls, usd in classes.items():
                lines.append(f"{usd},USD,{day} 00:00:00,Usage,{acct},AmazonBedrock,USE1-Claude4.5Sonnet-{SUFFIX[cls]},"
                             f"InvokeModel,{usd},1K tokens")
            if compute and acct in compute:
                lines.append(f"{compute[acct][i]},USD,{day} 00:00:00,Usage,{acct},AmazonEC2,USE1-BoxUsage,RunInstances,24,Hrs")
    path.write_text("\n".join(lines) + "\n")
    return path


def flat(n: int, usd: str, cls: str = "input_uncached") -> list[dict[str, Decimal]]:
    return [{cls: Decimal(usd)} for _ in range(n)]


@pytest.fixture(scope="module")
def incidents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Detection]:
    out = tmp_path_factory.mktemp("det") / "export.parquet"
    m = generate(
        str(out), "focus-1.2", days=45, accounts=10,
        incidents=["runaway", "cache_miss", "gradual_growth", "noisy_batch", "compute_spike", "tiny_baseline",
                   "missing_days", "unit_error"],
    )
    return m, detect(load([str(out)]))


def test_known_answers_for_every_incident(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    assert det.as_of == date(2026, 10, 1)
    flagged = {r.account for r in det.flagged}
    expected = {a for a, yes in m.expect_runaway().items() if yes}
    assert flagged == expected
    assert len(expected) == 1
    # Every account was evaluated, including the ones that must not be flagged.
    assert {r.account for r in det.runaways} == set(m.accounts)


def test_runaway_finding_details(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    (r,) = det.flagged
    assert m.accounts[r.account] == "runaway"
    assert r.driver == "input"
    assert r.compute_flat is True
    assert r.baseline_days == 23
    assert Decimal(6) < r.baseline_avg < Decimal(8)
    assert Decimal(120) < r.recent_avg < Decimal(150)
    assert r.spike_ratio is not None and r.spike_ratio > 15
    assert r.days == [date(2026, 9, 28), date(2026, 9, 29), date(2026, 9, 30)]
    assert r.flagged_days == r.days
    j = r.to_json()
    for key in ("kind", "account", "recent_avg_daily_cost", "baseline_avg_daily_cost", "baseline_stddev", "spike_ratio",
                "sigma_distance", "driver", "compute_flat"):
        assert key in j
    assert j["kind"] == "runaway_inference"


def test_not_flagged_cases_are_for_the_right_reason(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    by_incident = {m.accounts[r.account]: r for r in det.runaways}
    tiny = by_incident["tiny_baseline"]
    assert tiny.spike_ratio is not None and tiny.spike_ratio > 5  # a big ratio...
    assert tiny.baseline_avg < 1 and not tiny.flagged  # ...on a baseline under $1/day
    noisy = by_incident["noisy_batch"]
    assert noisy.baseline_stddev > noisy.baseline_avg / 2 and not noisy.flagged
    compute = by_incident["compute_spike"]
    assert not compute.flagged and compute.compute_flat is False
    missing = by_incident["missing_days"]
    # A third of the baseline days have no rows: counted as $0, the mean is about 2/3 of $30.
    assert Decimal(17) < missing.baseline_avg < Decimal(23) and not missing.flagged


def test_days_without_rows_count_as_zero(tmp_path: Path) -> None:
    days: list[dict[str, Decimal]] = [{"input_uncached": Decimal(10)} if i % 2 == 0 else {} for i in range(40)]
    # EC2 bills every day, so the export covers all 40 days while Bedrock skips every other one.
    exp = load([str(write_days(tmp_path / "e.csv", {"111": days}, {"111": [Decimal(1)] * 40}))])
    det = detect(exp, as_of=START + timedelta(days=40))
    (r,) = det.runaways
    # Baseline days back 8..30 = day indexes 10..32: 12 even (with $10) and 11 odd (no rows).
    assert r.baseline_days == 23
    assert r.baseline_avg == Decimal(120) / 23


def test_flat_baseline_sigma_zero(tmp_path: Path) -> None:
    small = flat(40, "10") + flat(3, "11")
    big = flat(40, "10") + flat(3, "30")
    exp = load([str(write_days(tmp_path / "e.csv", {"small": small, "big": big}))])
    det = detect(exp)
    by = {r.account: r for r in det.runaways}
    assert by["small"].baseline_stddev == 0
    assert not by["small"].flagged  # +10% on a flat line is not a runaway
    assert by["big"].flagged
    assert by["big"].sigma_distance == Decimal(20)  # (30 - 10) / max(0, 10% of 10)


def test_incomplete_current_day_is_never_counted(tmp_path: Path) -> None:
    lines = [HEADER]
    for i in range(40):
        day = START + timedelta(days=i)
        hours = range(24) if i < 39 else range(10)
        usd = "0.5" if i < 39 else "500"
        for h in hours:
            lines.append(f"{usd},USD,{day} {h:02d}:00:00,Usage,111,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,Invoke,1,1K tokens")
    f = tmp_path / "partial.csv"
    f.write_text("\n".join(lines) + "\n")
    exp = load([str(f)])
    det = detect(exp)
    assert det.as_of == START + timedelta(days=39)  # the partial day itself
    (r,) = det.runaways
    assert r.recent_avg == Decimal(12) and not r.flagged
    assert any("incomplete" in n for n in det.notes)
    # Asked explicitly to include it, the spike is there.
    det2 = detect(exp, as_of=START + timedelta(days=40))
    assert det2.runaways[0].flagged


@pytest.mark.parametrize(
    ("spike", "driver"),
    [
        ({"input_uncached": Decimal(5), "output": Decimal(5), "cache_write": Decimal(90)}, "cache_write"),
        ({"input_uncached": Decimal(5), "output": Decimal(95)}, "output"),
        ({"input_uncached": Decimal(80), "cache_read": Decimal(10), "output": Decimal(10)}, "input"),
        ({"input_uncached": Decimal(34), "output": Decimal(33), "cache_write": Decimal(33)}, "mixed"),
    ],
)
def test_driver_classification(tmp_path: Path, spike: dict[str, Decimal], driver: str) -> None:
    base = {"input_uncached": Decimal(2), "output": Decimal(2), "cache_read": Decimal(1), "cache_write": Decimal(1)}
    days = [dict(base) for _ in range(40)]
    for i in (37, 38, 39):
        days[i] = {k: base.get(k, Decimal(0)) + spike.get(k, Decimal(0)) for k in set(base) | set(spike)}
    compute = {"111": [Decimal(50)] * 37 + [Decimal(200)] * 3}
    exp = load([str(write_days(tmp_path / "e.csv", {"111": days}, compute))])
    (r,) = detect(exp).runaways
    assert r.flagged
    assert r.driver == driver
    assert r.compute_flat is False  # compute quadrupled as well


def test_cache_miss_the_38k_case(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    misses = {m.accounts[c.account]: c for c in det.cache_misses}
    c = misses["cache_miss"]
    assert c.model == "claude-sonnet-4.5"
    # ~6.47 B uncached and ~1.67 B read over the 30-day window.
    assert Decimal("6.2e9") < c.uncached_input_tokens < Decimal("6.8e9")
    assert Decimal("1.5e9") < c.cache_read_tokens < Decimal("1.8e9")
    assert c.input_price_per_mtok == Decimal(3) and c.cache_read_price_per_mtok == Decimal("0.3")
    assert c.price_source == "export"
    extra = Decimal("0.8") * (c.uncached_input_tokens + c.cache_read_tokens) - c.cache_read_tokens
    assert c.wasted_usd == extra * Decimal("2.7") / Decimal(1_000_000)
    # Healthy accounts cache well and are not reported.
    assert "healthy" not in misses and "gateway" not in misses


def test_budget_advice_from_last_month(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    lines, _ = plan(m.accounts, m.first_day, m.days, gateway_incidents=["unit_error"])
    spend: dict[str, Decimal] = defaultdict(Decimal)
    for ln in lines:
        if ln.day.month == 9 and ln.service_code in ("AmazonBedrock", "AWSMarketplace"):
            spend[ln.account] += ln.cost
    advice = {b.account: b for b in det.budgets}
    assert set(advice) == set(spend)
    for acct, b in advice.items():
        assert b.period == "2026-09"
        assert b.bedrock_spend_usd == spend[acct]
        if m.accounts[acct] == "runaway":
            # The incident's days are left out and the usual days scaled to the month.
            assert b.excluded_days == [date(2026, 9, 28), date(2026, 9, 29), date(2026, 9, 30)]
            usual = (spend[acct] - b.excluded_usd) * 30 / 27
            assert b.monthly_budget_usd == 2 * usual
            assert b.monthly_budget_usd < spend[acct]
            continue
        assert b.excluded_days == []
        assert b.monthly_budget_usd == 2 * spend[acct]
        assert b.dev_test_monthly_budget_usd == min(2 * spend[acct], Decimal(3000))


def test_short_history_still_evaluates_with_a_note(tmp_path: Path) -> None:
    exp = load([str(write_days(tmp_path / "e.csv", {"111": flat(20, "10") + flat(3, "50")}))])
    det = detect(exp)
    assert det.runaways[0].baseline_days == 16  # days back 8..23: the export starts 23 days before as_of
    assert det.runaways[0].flagged
    assert any("baseline is shorter" in n for n in det.notes)


def test_cache_health_table_covers_every_model(incidents: tuple[Manifest, Detection]) -> None:
    m, det = incidents
    pairs = {(c.account, c.model) for c in det.cache}
    assert (m.gateway_account, "claude-haiku-4.5") in pairs
    assert {a for a, _ in pairs} == {a for a, i in m.accounts.items()}
    by = {(m.accounts[c.account], c.model): c for c in det.cache}
    miss = by[("cache_miss", "claude-sonnet-4.5")]
    assert miss.read_ratio is not None and Decimal("0.2") < miss.read_ratio < Decimal("0.3")
    healthy = by[("gateway", "claude-sonnet-4.5")]
    assert healthy.read_ratio is not None and abs(healthy.read_ratio - 4) < Decimal("0.01")  # the healthy mix
    assert miss.to_json()["uncached_input_tokens"] == int(miss.tokens["input_uncached"])
