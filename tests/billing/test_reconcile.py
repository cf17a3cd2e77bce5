from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from tokenfuse.billing.cli import main
from tokenfuse.billing.load import load
from tokenfuse.billing.reconcile import markdown, read_ledger, reconcile
from tokenfuse.billing.sample import generate, plan, write_ledger
from tokenfuse.ledger.schema import COLUMN_NAMES, connect

GATEWAY = "210987650000"


def _ledger(tmp_path: Path, name: str = "ledger.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_1000x_unit_error_end_to_end_from_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _ledger(tmp_path)
    bill = tmp_path / "bill.csv.gz"
    m = generate(str(bill), "cur-2.0", days=20, accounts=2, incidents=["unit_error"], ledger_url=url)
    report = tmp_path / "case.md"
    rc = main(["reconcile", "--ledger", url, "--billing", str(bill), "--account", GATEWAY, "--json", "--report", str(report)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out, parse_float=Decimal)
    (f,) = out["findings"]
    assert f["kind"] == "unit_mismatch"
    assert (f["model"], f["token_class"], f["factor"]) == ("claude-haiku-4.5", "output", 1000)
    assert f["explanation"] == "billed raw tokens as 1K units"
    true_tokens = sum(day["Claude4.5Haiku"]["output"] for day in m.true_tokens.values())
    assert f["ledger_tokens"] == true_tokens
    assert f["billed_tokens"] == true_tokens * 1000
    # Haiku output at $5 per million tokens, the bill's own unit price.
    assert f["unit_price_per_mtok"] == Decimal(5)
    assert f["expected_usd"] == (Decimal(true_tokens) * 5 / 1_000_000).quantize(Decimal("0.000001"))
    assert f["billed_usd"] == f["expected_usd"] * 1000
    text = report.read_text()
    assert "billed raw tokens as 1K units" in text
    assert "1K tokens" in text and "## Day by day" in text
    assert text.count("| 2026-09-") >= 20  # a row per day for the mismatched class
    # Every other class agrees exactly.
    others = [s for s in out["summary"] if (s["model"], s["token_class"]) != ("claude-haiku-4.5", "output")]
    assert others and all(s["ratio"] == 1 for s in others)


def test_a_clean_bill_agrees(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    bill = tmp_path / "bill.parquet"
    generate(str(bill), "focus-1.2", days=15, accounts=1, ledger_url=url)
    rec = reconcile(load([str(bill)]), read_ledger(url), GATEWAY)
    assert rec.findings == []


def test_billing_lag_and_unmetered_usage(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    bill = tmp_path / "bill.csv"
    m = generate(str(bill), "focus-1.0", days=20, accounts=1, incidents=["billing_lag", "unmetered"], ledger_url=url)
    rec = reconcile(load([str(bill)]), read_ledger(url), GATEWAY)
    kinds = sorted(f["kind"] for f in rec.findings)
    assert kinds == ["billing_lag", "billing_lag", "unmetered_usage"]
    lags = {f["model"]: f for f in rec.findings if f["kind"] == "billing_lag"}
    assert set(lags) == {"claude-sonnet-4.5", "claude-haiku-4.5"}
    for f in lags.values():
        assert f["days_missing_from_bill"] == ["2026-09-26", "2026-09-27"]
        assert f["lump_day"] == "2026-09-28"
    sonnet_missing = sum(
        n for d in (date(2026, 9, 26), date(2026, 9, 27)) for n in m.true_tokens[d]["Claude4.5Sonnet"].values()
    )
    assert lags["claude-sonnet-4.5"]["ledger_tokens_on_missing_days"] == sonnet_missing
    assert lags["claude-sonnet-4.5"]["lump_excess_tokens"] == sonnet_missing
    (un,) = [f for f in rec.findings if f["kind"] == "unmetered_usage"]
    assert un["model"] == "novapro" and un["billed_usd"] > 0


def test_ledger_rows_written_through_the_schema_directly(tmp_path: Path) -> None:
    """A hand-written ledger (the gateway's exact schema) against a hand-written 1K-unit bill."""
    url = _ledger(tmp_path)
    conn = connect(url)
    rows = []
    for day, ts in ((date(2026, 9, 1), 1788264000.0), (date(2026, 9, 2), 1788350400.0)):
        values = dict.fromkeys(COLUMN_NAMES)
        values.update(ts=ts, request_id=f"r-{day}", protocol="bedrock", model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                      input_uncached=2000, cache_read=0, cache_write=0, cache_write_1h=0, output=500,
                      cost_usd="0.0135", estimated=0, outcome="ok")
        rows.append(tuple(values[c] for c in COLUMN_NAMES))
    # A refused request is not billed and must not count.
    refused = dict(zip(COLUMN_NAMES, rows[0], strict=True)) | {"request_id": "x", "outcome": "refused", "output": 99999}
    rows.append(tuple(refused[c] for c in COLUMN_NAMES))
    conn.executemany(f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})", rows)
    conn.close()
    bill = tmp_path / "cur.csv"
    bill.write_text(
        "line_item_usage_start_date,line_item_usage_account_id,line_item_line_item_type,product_servicecode,"
        "line_item_usage_type,line_item_operation,line_item_usage_amount,pricing_unit,line_item_unblended_cost,"
        "line_item_currency_code\n"
        "2026-09-01T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,InvokeModel,2,1K tokens,0.006,USD\n"
        "2026-09-01T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-output-tokens,InvokeModel,500,1K tokens,7.5,USD\n"
        "2026-09-02T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,InvokeModel,2,1K tokens,0.006,USD\n"
        "2026-09-02T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-output-tokens,InvokeModel,500,1K tokens,7.5,USD\n"
    )
    rec = reconcile(load([str(bill)]), read_ledger(url))
    (f,) = rec.findings
    assert (f["kind"], f["token_class"], f["factor"]) == ("unit_mismatch", "output", 1000)
    assert f["ledger_tokens"] == 1000
    assert f["billed_usd"] == Decimal("15")
    assert f["expected_usd"] == Decimal("0.015")


def test_missing_ledger_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bill = tmp_path / "b.csv"
    generate(str(bill), "cur-2.0", days=10, accounts=1)
    rc = main(["reconcile", "--ledger", f"sqlite:///{tmp_path / 'nope.db'}", "--billing", str(bill)])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.db" in err and "Traceback" not in err


@pytest.mark.services
def test_reconcile_from_postgresql_ledger(tmp_path: Path, pg_url: str) -> None:
    bill = tmp_path / "bill.parquet"
    generate(str(bill), "cur-2.0", days=12, accounts=1, incidents=["unit_error"])
    _, truth = plan({GATEWAY: "gateway"}, date(2026, 9, 19), 12, gateway_incidents=["unit_error"])
    write_ledger(pg_url, truth)
    rec = reconcile(load([str(bill)]), read_ledger(pg_url), GATEWAY)
    (f,) = rec.findings
    assert (f["kind"], f["model"], f["factor"]) == ("unit_mismatch", "claude-haiku-4.5", 1000)


def test_price_book_prices_a_class_the_bill_never_shows(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    conn = connect(url)
    values = dict.fromkeys(COLUMN_NAMES)
    values.update(ts=1788264000.0, request_id="r1", protocol="bedrock", model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                  input_uncached=1000, cache_read=5000, cache_write=0, cache_write_1h=0, output=100, cost_usd="0",
                  estimated=0, outcome="ok")
    conn.execute(f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})",
                 tuple(values[c] for c in COLUMN_NAMES))
    conn.close()
    bill = tmp_path / "cur.csv"
    bill.write_text(
        "line_item_usage_start_date,line_item_usage_account_id,line_item_line_item_type,product_servicecode,"
        "line_item_usage_type,line_item_usage_amount,pricing_unit,line_item_unblended_cost\n"
        "2026-09-01T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-input-tokens,1,1K tokens,0.003\n"
        "2026-09-01T00:00:00Z,1,Usage,AmazonBedrock,USE1-Claude4.5Sonnet-output-tokens,0.1,1K tokens,0.0015\n"
    )
    from tokenfuse.billing.reconcile import book_price, summary

    rec = reconcile(load([str(bill)]), read_ledger(url))
    rows = {s["token_class"]: s for s in summary(rec)}
    assert rows["input_uncached"]["price_source"] == "bill"
    assert rows["input_uncached"]["expected_usd"] == Decimal("0.003")
    rate = book_price("claude-sonnet-4.5", "Claude4.5Sonnet", "cache_read")
    if rate is None:
        pytest.skip("the price book does not price claude-sonnet-4-5")
    assert rows["cache_read"]["price_source"] == "price book"
    assert rows["cache_read"]["expected_usd"] == (5000 * rate).quantize(Decimal("0.000001"))


def test_usage_the_bill_has_beyond_the_ledger(tmp_path: Path) -> None:
    """Without --account, a second account's Sonnet calls are on the bill but not in the ledger."""
    url = _ledger(tmp_path)
    bill = tmp_path / "bill.parquet"
    generate(str(bill), "cur-2.0", days=15, accounts=2, ledger_url=url)
    exp = load([str(bill)])
    rec = reconcile(exp, read_ledger(url))
    partial = {f["token_class"]: f for f in rec.findings if f["kind"] == "unmetered_usage"}
    assert set(partial) == {"input_uncached", "cache_read", "cache_write", "output"}
    other = exp.con.execute(
        "SELECT sum(tokens) FROM bill WHERE kind = 'inference' AND account <> ? AND token_class = 'output'", [GATEWAY]
    ).fetchone()
    assert other is not None
    assert partial["output"]["unmetered_tokens"] == other[0]
    assert {f["model"] for f in partial.values()} == {"claude-sonnet-4.5"}
    report = markdown(rec, "ledger", exp.files)
    assert report.count("### Unmetered usage: ") == 4 and "tokens beyond the" in report


def test_a_1000x_error_that_starts_part_way_through_the_period(tmp_path: Path) -> None:
    """11 of 45 days at 1000x: one unit_mismatch with its change point, not 'unmetered usage'."""
    from tokenfuse.billing.sample import LATE_ERROR_DAYS

    url = _ledger(tmp_path)
    bill = tmp_path / "bill.parquet"
    m = generate(str(bill), "cur-2.0", days=45, accounts=1, incidents=["unit_error_late"], ledger_url=url)
    rec = reconcile(load([str(bill)]), read_ledger(url), GATEWAY)
    (f,) = rec.findings
    assert (f["kind"], f["model"], f["token_class"], f["factor"]) == ("unit_mismatch", "claude-haiku-4.5", "output", 1000)
    assert f["error_type"] == "billing_error"
    assert f["days"] == LATE_ERROR_DAYS == 11
    assert f["started"] == f["first_day"] == "2026-09-20" and f["last_day"] == "2026-09-30"
    assert f["stopped"] is None
    assert f["reference_price_source"] == "bill (agreeing days)" and f["reference_price_per_mtok"] == 5
    late = [d for d in m.true_tokens if d >= date(2026, 9, 20)]
    tokens = sum(m.true_tokens[d]["Claude4.5Haiku"]["output"] for d in late)
    assert f["ledger_tokens"] == tokens
    assert f["expected_usd"] == (Decimal(tokens) * 5 / 1_000_000).quantize(Decimal("0.000001"))
    assert f["overbilled_usd"] == f["billed_usd"] - f["expected_usd"] and f["overbilled_usd"] > 0
    assert "It starts on 2026-09-20" in markdown(rec, "ledger", [str(bill)])


def test_a_wrong_unit_label_with_correct_dollars_is_not_an_overcharge(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    bill = tmp_path / "bill.csv"
    generate(str(bill), "focus-1.2", days=20, accounts=1, incidents=["unit_label"], ledger_url=url)
    rec = reconcile(load([str(bill)]), read_ledger(url), GATEWAY)
    (f,) = rec.findings
    assert (f["kind"], f["token_class"], f["factor"], f["error_type"]) == ("unit_mismatch", "output", Decimal("0.001"),
                                                                             "unit_label")
    assert abs(f["overbilled_usd"]) < Decimal("0.01")
    assert abs(f["billed_usd"] - f["expected_usd"]) < Decimal("0.01")
    assert f["pricing_units"] == ["Tokens"]
    text = markdown(rec, "ledger", [str(bill)])
    assert "### Unit label:" in text and "no refund is due" in text
