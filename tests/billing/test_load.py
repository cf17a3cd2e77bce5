from __future__ import annotations

import gzip
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.load import detect_flavour, load
from tokenfuse.billing.sample import _assign, generate, plan

FOCUS_HEADER = "BilledCost,BillingCurrency,ChargePeriodStart,ChargeCategory,SubAccountId,x_ServiceCode,x_UsageType,x_Operation,PricingQuantity,PricingUnit"


def _expected_costs(accounts: int, incidents: list[str], days: int) -> dict[str, Decimal]:
    assigned = _assign(accounts, incidents)
    lines, _ = plan(assigned, date(2026, 9, 30) - timedelta(days=days - 1), days)
    out: dict[str, Decimal] = defaultdict(Decimal)
    for ln in lines:
        out[ln.account] += ln.cost
    return dict(out)


@pytest.mark.parametrize("flavour", ["focus-1.0", "focus-1.2", "cur-2.0"])
@pytest.mark.parametrize("ext", ["csv", "csv.gz", "parquet"])
def test_every_flavour_and_format_loads_exact_totals(tmp_path: Path, flavour: str, ext: str) -> None:
    out = tmp_path / f"export.{ext}"
    m = generate(str(out), flavour, days=12, accounts=3, incidents=["runaway"])
    exp = load([str(out)])
    assert exp.flavours == (flavour,)
    assert exp.rows == m.rows
    assert (exp.first_day, exp.last_day) == (m.first_day, m.last_day)
    assert exp.last_ts == datetime(2026, 9, 30, 23, 0)
    assert exp.last_day_complete
    assert exp.currency == "USD"
    got = dict(exp.con.execute("SELECT account, sum(cost) FROM bill GROUP BY account").fetchall())
    assert got == _expected_costs(3, ["runaway"], 12)


def test_folder_and_several_files_mixing_formats(tmp_path: Path) -> None:
    generate(str(tmp_path / "a" / "part1.parquet"), "cur-2.0", days=12, accounts=2, last_day=date(2026, 9, 18))
    generate(str(tmp_path / "a" / "sub" / "part2.csv.gz"), "cur-2.0", days=12, accounts=2, last_day=date(2026, 9, 30))
    (tmp_path / "a" / "README.txt").write_text("not an export")
    exp = load([str(tmp_path / "a")])
    assert len(exp.files) == 2
    assert (exp.first_day, exp.last_day) == (date(2026, 9, 7), date(2026, 9, 30))
    days = exp.con.execute("SELECT count(DISTINCT day) FROM bill").fetchone()
    assert days == (24,)


def test_marketplace_rows_take_the_model_from_the_product(tmp_path: Path) -> None:
    out = tmp_path / "cur.csv"
    generate(str(out), "cur-2.0", days=12, accounts=2)  # the second account bills through Marketplace
    exp = load([str(out)])
    rows = exp.con.execute(
        "SELECT DISTINCT model, token_class FROM bill WHERE usage_type LIKE '%-MP:%' ORDER BY 2"
    ).fetchall()
    assert rows == [
        ("claude-sonnet-4.5", "cache_read"),
        ("claude-sonnet-4.5", "cache_write"),
        ("claude-sonnet-4.5", "input_uncached"),
        ("claude-sonnet-4.5", "output"),
    ]


def test_real_focus_sample_quirks(focus_sample: Path) -> None:
    # FinOps Foundation FOCUS sample data, CC BY 4.0 (see docs/billing.md for attribution).
    exp = load([str(focus_sample)])
    assert exp.flavours == ("focus-1.0",)
    assert exp.rows == 1000
    assert (exp.first_day, exp.last_day) == (date(2024, 9, 1), date(2024, 9, 30))
    assert exp.currency == "USD"
    # Literal "NULL" is read as null, not as a usage type or account called NULL.
    nulls = exp.con.execute("SELECT count(*) FROM bill_lines WHERE usage_type = 'NULL' OR account = 'NULL'").fetchone()
    assert nulls == (0,)
    charges = {r[0] for r in exp.con.execute("SELECT DISTINCT charge FROM bill").fetchall()}
    assert charges == {"usage", "adjustment", "credit"}
    kinds = dict(exp.con.execute("SELECT kind, count(*) FROM bill GROUP BY kind").fetchall())
    assert "inference" not in kinds
    assert kinds["compute"] > 0
    raw = duckdb.connect().execute(
        f"SELECT sum(CAST(BilledCost AS DECIMAL(38,12))) FROM read_csv('{focus_sample}', all_varchar=true, nullstr='NULL')"
    ).fetchone()
    total = exp.con.execute("SELECT sum(cost) FROM bill").fetchone()
    assert raw is not None and total is not None and total[0] == raw[0]


def test_timestamps_with_and_without_t_z_and_offsets(tmp_path: Path) -> None:
    f = tmp_path / "ts.csv"
    f.write_text(
        FOCUS_HEADER + "\n"
        "1.5,USD,2026-09-01 23:00:00,Usage,111,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,Invoke,1,1K tokens\n"
        "2.5,USD,2026-09-02T23:00:00Z,usage,111,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,Invoke,1,1K tokens\n"
        "3.5,USD,2026-09-04T01:00:00+02:00,USAGE,111,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,Invoke,1,1K tokens\n"
        "4.5,usd,2026-09-04T23:00:00.000Z,Usage,111,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,Invoke,NULL,NULL\n"
    )
    exp = load([str(f)])
    rows = exp.con.execute("SELECT day, cost, is_usage, tokens FROM bill ORDER BY day").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (date(2026, 9, 1), Decimal("1.5"), True),
        (date(2026, 9, 2), Decimal("2.5"), True),
        (date(2026, 9, 3), Decimal("3.5"), True),  # 01:00 at +02:00 is 23:00 UTC the day before
        (date(2026, 9, 4), Decimal("4.5"), True),
    ]
    assert rows[0][3] == Decimal(1000)
    assert rows[3][3] is None
    assert exp.currency == "USD"


def test_incomplete_last_day_is_recognised(tmp_path: Path) -> None:
    f = tmp_path / "partial.csv"
    lines = [FOCUS_HEADER]
    for h in range(24):
        lines.append(f"1,USD,2026-09-01 {h:02d}:00:00,Usage,111,AmazonEC2,BoxUsage,RunInstances,1,Hrs")
    for h in range(14):
        lines.append(f"1,USD,2026-09-02 {h:02d}:00:00,Usage,111,AmazonEC2,BoxUsage,RunInstances,1,Hrs")
    f.write_text("\n".join(lines) + "\n")
    exp = load([str(f)])
    assert exp.last_day == date(2026, 9, 2)
    assert not exp.last_day_complete


def test_flavour_detection_from_columns() -> None:
    assert detect_flavour(["line_item_usage_type", "line_item_unblended_cost"]) == "cur-2.0"
    assert detect_flavour(["BilledCost", "ChargePeriodStart", "x_UsageType"]) == "focus-1.0"
    assert detect_flavour(["BilledCost", "ChargePeriodStart", "SkuMeter", "x_Operation"]) == "focus-1.2"
    assert detect_flavour(["billedcost", "chargeperiodstart"]) == "focus-1.0"
    assert detect_flavour(["name", "price"]) is None


def _err(paths: list[str]) -> str:
    with pytest.raises(BillingInputError) as info:
        load(paths)
    return str(info.value)


def test_not_a_billing_export(tmp_path: Path) -> None:
    f = tmp_path / "people.csv"
    f.write_text("name,age\nada,36\n")
    msg = _err([str(f)])
    assert str(f) in msg and "not a FOCUS or CUR 2.0 billing export" in msg


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    f = tmp_path / "nocost.csv"
    f.write_text("ChargePeriodStart,ChargeCategory,SubAccountId,x_ServiceCode,x_UsageType\n2026-09-01,Usage,1,AmazonEC2,Box\n")
    msg = _err([str(f)])
    assert str(f) in msg and "BilledCost" in msg


def test_mixed_currencies_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "cur.csv"
    f.write_text(
        FOCUS_HEADER + "\n"
        "1,USD,2026-09-01 00:00:00,Usage,1,AmazonEC2,Box,Run,1,Hrs\n"
        "1,EUR,2026-09-01 00:00:00,Usage,1,AmazonEC2,Box,Run,1,Hrs\n"
    )
    msg = _err([str(f)])
    assert "BillingCurrency" in msg and "EUR" in msg and "USD" in msg


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "empty" in _err([str(empty)])
    gz = tmp_path / "empty.csv.gz"
    gz.write_bytes(gzip.compress(b""))
    assert "empty" in _err([str(gz)])
    header = tmp_path / "header.csv"
    header.write_text(FOCUS_HEADER + "\n")
    assert "no rows" in _err([str(header)])


def test_corrupt_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    generate(str(good), "cur-2.0", days=10, accounts=1)
    bad = tmp_path / "bad.parquet"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    msg = _err([str(bad)])
    assert str(bad) in msg and "Parquet" in msg
    notparquet = tmp_path / "text.parquet"
    notparquet.write_text("hello")
    assert "Parquet" in _err([str(notparquet)])


def test_bad_value_names_file_and_column(tmp_path: Path) -> None:
    f = tmp_path / "badcost.csv"
    f.write_text(FOCUS_HEADER + "\n1,USD,2026-09-01 00:00:00,Usage,1,AmazonEC2,Box,Run,1,Hrs\nabc,USD,2026-09-01 00:00:00,Usage,1,AmazonEC2,Box,Run,1,Hrs\n")
    msg = _err([str(f)])
    assert str(f) in msg and "BilledCost" in msg and "'abc'" in msg


def test_missing_path() -> None:
    assert "no such file" in _err(["/nonexistent/export.csv"])


def test_scientific_notation_and_padding_in_numbers(tmp_path: Path) -> None:
    f = tmp_path / "sci.csv"
    f.write_text(
        FOCUS_HEADER + "\n"
        "1.5E-7,USD,2026-09-01 00:00:00,Usage,1,AmazonEC2,Box,Run, 2e3 ,Hrs\n"
        " 0.25 ,USD,2026-09-01 01:00:00,Usage,1,AmazonEC2,Box,Run,1,Hrs\n"
    )
    exp = load([str(f)])
    row = exp.con.execute("SELECT sum(cost), sum(quantity) FROM bill").fetchone()
    assert row == (Decimal("0.25000015"), Decimal(2001))
