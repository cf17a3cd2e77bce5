from __future__ import annotations

import gzip
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
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


def test_cur_and_focus_together_map_by_column_name(tmp_path: Path) -> None:
    """Each flavour lists its columns in its own order; the union is by name, never by position."""
    cur = tmp_path / "mixed" / "cur.csv.gz"
    focus = tmp_path / "mixed" / "focus.parquet"
    generate(str(cur), "cur-2.0", days=12, accounts=2, last_day=date(2026, 9, 30))
    generate(str(focus), "focus-1.2", days=12, accounts=2, last_day=date(2026, 8, 31))
    a, b = load([str(cur)]), load([str(focus)])
    exp = load([str(tmp_path / "mixed")])
    assert exp.flavours == ("cur-2.0", "focus-1.2")
    assert exp.dropped_files == []
    total = exp.con.execute("SELECT sum(cost), sum(tokens) FROM bill").fetchone()
    parts = [e.con.execute("SELECT sum(cost), sum(tokens) FROM bill").fetchone() for e in (a, b)]
    assert total == (parts[0][0] + parts[1][0], parts[0][1] + parts[1][1])  # type: ignore[index]


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_cur2_product_map_names_the_marketplace_model(tmp_path: Path, ext: str) -> None:
    """The model of a Marketplace line is product['product_name'], not its opaque product code."""
    from tokenfuse.billing.detect import detect

    out = tmp_path / f"cur.{ext}"
    m = generate(str(out), "cur-2.0", days=45, accounts=3, incidents=["cache_miss_marketplace"])
    raw = duckdb.connect().execute(
        f"SELECT DISTINCT line_item_product_code FROM '{out}' WHERE line_item_usage_type LIKE '%-MP:%'"
    ).fetchall()
    assert len(raw) == 1 and len(raw[0][0]) == 25  # opaque, like b3hzdk7mhh2vz0ywa7kjh0eyt
    exp = load([str(out)])
    models = {r[0] for r in exp.con.execute("SELECT DISTINCT model FROM bill WHERE kind = 'inference'").fetchall()}
    assert models == {"claude-sonnet-4.5", "claude-haiku-4.5"}
    (miss,) = detect(exp).cache_misses
    assert m.accounts[miss.account] == "cache_miss_marketplace"
    assert miss.model_label == "Claude Sonnet 4.5 (Amazon Bedrock Edition)"
    assert Decimal(12_000) < miss.wasted_usd < Decimal(14_000)


def test_account_ids_typed_as_integers_in_one_parquet_part(tmp_path: Path) -> None:
    src = tmp_path / "src.parquet"
    generate(str(src), "cur-2.0", days=12, accounts=1)
    folder = tmp_path / "parts"
    folder.mkdir()
    con = duckdb.connect()
    # Part 1 spells the id as a string with its leading zero; part 2's writer typed it BIGINT.
    con.execute(
        f"COPY (SELECT * REPLACE ('012345678901' AS line_item_usage_account_id) FROM '{src}' "
        f"WHERE line_item_usage_start_date < '2026-09-25') TO '{folder / 'part-00001.parquet'}' (FORMAT PARQUET)"
    )
    con.execute(
        f"COPY (SELECT * REPLACE (CAST(12345678901 AS BIGINT) AS line_item_usage_account_id, "
        f"CAST(999999999999 AS BIGINT) AS bill_payer_account_id) FROM '{src}' "
        f"WHERE line_item_usage_start_date >= '2026-09-25') TO '{folder / 'part-00002.parquet'}' (FORMAT PARQUET)"
    )
    exp = load([str(folder)])
    assert exp.dropped_files == []
    accounts = exp.con.execute("SELECT account, count(DISTINCT day), sum(cost) FROM bill GROUP BY account").fetchall()
    total = con.execute(f"SELECT sum(line_item_unblended_cost) FROM '{src}'").fetchone()
    assert accounts == [("012345678901", 12, total[0] if total else None)]


def test_partial_day_and_a_next_day_daily_row_do_not_count_as_complete(tmp_path: Path) -> None:
    """Hourly rows stop at 13:00 on 2026-09-30 and one daily S3 row is dated 2026-10-01."""
    from tokenfuse.billing.detect import detect

    full = tmp_path / "full.parquet"
    m = generate(str(full), "cur-2.0", days=45, accounts=4, incidents=["runaway"])
    cut = tmp_path / "refreshed.parquet"
    duckdb.connect().execute(
        f"""COPY (SELECT * FROM '{full}' WHERE line_item_usage_start_date < TIMESTAMP '2026-09-30 14:00:00'
                  UNION ALL
                  SELECT * REPLACE (TIMESTAMP '2026-10-01 00:00:00' AS line_item_usage_start_date)
                  FROM '{full}' WHERE line_item_usage_type LIKE '%TimedStorage%'
                    AND line_item_usage_start_date = TIMESTAMP '2026-09-30 00:00:00'
                    AND line_item_usage_account_id = '{m.gateway_account}')
            TO '{cut}' (FORMAT PARQUET)"""
    )
    exp = load([str(cut)])
    assert exp.last_day == date(2026, 10, 1)
    assert exp.last_complete_day == date(2026, 9, 29)
    assert not exp.last_day_complete
    assert any(n.startswith("2026-10-01 is incomplete") for n in exp.notes)
    assert any(n.startswith("2026-09-30 is incomplete") and "23:00" in n for n in exp.notes)
    det = detect(exp)
    assert det.as_of == date(2026, 9, 30)
    # The same figures as the full export judged on the same days.
    ref = {r.account: r for r in detect(load([str(full)]), as_of=date(2026, 9, 30)).runaways}
    for r in det.runaways:
        assert (r.recent_avg, r.baseline_avg, r.flagged) == (ref[r.account].recent_avg, ref[r.account].baseline_avg,
                                                             ref[r.account].flagged)


def test_daily_export_refreshed_mid_day(tmp_path: Path) -> None:
    f = tmp_path / "daily.csv"
    lines = [FOCUS_HEADER]
    for i in range(10):
        day = date(2026, 9, 21) + timedelta(days=i)
        for svc in ("AmazonEC2", "AmazonS3", "AWSLambda"):
            lines.append(f"10,USD,{day} 00:00:00,Usage,111,{svc},Box,Run,1,Hrs")
    f.write_text("\n".join(lines) + "\n")
    import os

    refreshed = datetime(2026, 9, 30, 14, 5).replace(tzinfo=UTC).timestamp()
    os.utime(f, (refreshed, refreshed))
    exp = load([str(f)])
    assert exp.last_day == date(2026, 9, 30)
    assert exp.last_complete_day == date(2026, 9, 29)
    assert any("written at 2026-09-30 14:05 UTC, before the day ended" in n for n in exp.notes)


def test_parquet_parts_and_csv_give_the_same_lines(tmp_path: Path) -> None:
    """Line strings are read back by row number from Parquet (file index and row within each part) and
    come from the scan itself for CSV: both give the same billing lines, Marketplace names included."""
    csv = tmp_path / "cur.csv"
    generate(str(csv), "cur-2.0", days=15, accounts=3, incidents=["cache_miss_marketplace"])
    parts = tmp_path / "parts"
    parts.mkdir()
    con = duckdb.connect()
    for i, (lo, hi) in enumerate((("2000-01-01", "2026-09-20"), ("2026-09-20", "2026-09-26"), ("2026-09-26", "2100-01-01"))):
        con.execute(
            f"COPY (SELECT * FROM read_csv('{csv}', all_varchar=true, nullstr='NULL') WHERE line_item_usage_start_date >= '{lo}' "
            f"AND line_item_usage_start_date < '{hi}' ORDER BY line_item_usage_type DESC) "
            f"TO '{parts / f'part-{i}.parquet'}' (FORMAT PARQUET, ROW_GROUP_SIZE 2048)"
        )
    query = (
        "SELECT account, day, service, usage_type, operation, model, model_label, token_class, kind, sum(cost), sum(tokens) "
        "FROM bill GROUP BY ALL ORDER BY ALL"
    )
    from_csv = load([str(csv)]).con.execute(query).fetchall()
    from_parts = load([str(parts)]).con.execute(query).fetchall()
    assert from_parts == from_csv
    assert any(r[6] == "Claude Sonnet 4.5 (Amazon Bedrock Edition)" for r in from_parts)
