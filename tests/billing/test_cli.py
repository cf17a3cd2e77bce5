from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tokenfuse.billing.cli import main
from tokenfuse.billing.sample import Manifest, generate

INCIDENTS = ["runaway", "cache_miss", "noisy_batch", "compute_spike", "tiny_baseline", "missing_days"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("cli") / "cur.csv"
    return out, generate(str(out), "cur-2.0", days=40, accounts=8, incidents=INCIDENTS)


def _runaway_account(m: Manifest) -> str:
    return next(a for a, i in m.accounts.items() if i == "runaway")


def test_detect_json_shape(export: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]) -> None:
    path, m = export
    assert main(["detect", str(path), "--json", "--as-of", "2026-10-01"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_float=Decimal)
    assert doc["as_of"] == "2026-10-01"
    runaways = [f for f in doc["findings"] if f["kind"] == "runaway_inference"]
    assert [f["account"] for f in runaways] == [_runaway_account(m)]
    f = runaways[0]
    assert f["driver"] == "input" and f["compute_flat"] is True
    assert isinstance(f["recent_avg_daily_cost"], Decimal) and f["spike_ratio"] > 10
    cache = [f for f in doc["findings"] if f["kind"] == "cache_miss"]
    assert {m.accounts[c["account"]] for c in cache} >= {"cache_miss"}
    for c in cache:
        assert {"account", "model", "uncached_input_tokens", "cache_read_tokens", "wasted_usd"} <= set(c)


def test_detect_text_escalation_and_html(export: tuple[Path, Manifest], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, m = export
    html = tmp_path / "report.html"
    assert main(["detect", str(path), "--escalation", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    acct = _runaway_account(m)
    assert re.search(rf"{acct}.*RUNAWAY", out)
    assert out.count("RUNAWAY") == 1
    assert f"## Escalation: runaway Bedrock inference in account {acct}" in out
    assert "What to check:" in out and "What to stop:" in out and "context accumulation" in out
    page = html.read_text()
    assert page.startswith("<!doctype html>")
    assert "<svg" in page and acct in page
    assert page.count('fill="#dc2626"') == 3  # the three flagged days
    assert "baseline mean ± 1σ" in page and "threshold (mean + 2σ)" in page
    # Self-contained: nothing is fetched when the file opens.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "<script" not in page


@pytest.mark.parametrize("flavour", ["cur-2.0", "focus-1.0", "focus-1.2"])
def test_printed_sql_flags_what_detect_flags(tmp_path: Path, flavour: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.parquet"
    m = generate(str(out), flavour, days=40, accounts=8, incidents=INCIDENTS)
    assert main(["detect", "--print-sql", "duckdb", "--check", "runaway", "--flavour", flavour, "--as-of", "2026-10-01"]) == 0
    sql = capsys.readouterr().out
    con = duckdb.connect()
    con.execute(f"CREATE TABLE billing_export AS SELECT * FROM read_parquet('{out}')")
    rows = con.execute(sql).fetchall()
    cols = [d[0] for d in con.description or []]
    flagged = {r[cols.index("account")] for r in rows if r[cols.index("flagged")]}
    assert flagged == {_runaway_account(m)}
    assert len(rows) == len(m.accounts)


@pytest.mark.parametrize("dialect", ["athena", "trino", "bigquery", "snowflake", "spark"])
def test_printed_sql_for_warehouses(dialect: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--print-sql", dialect, "--flavour", "focus-1.2", "--table", "cur.focus", "--as-of", "2026-10-01"]) == 0
    sql = capsys.readouterr().out
    assert "FROM cur.focus" in sql and "SkuMeter" in sql and "STDDEV_SAMP" in sql
    for check in ("runaway", "caching", "budget", "reconcile"):
        assert f"tokenfuse detect: {check} (focus-1.2, {dialect})" in sql


def test_billing_sample_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv.gz"
    assert main(["billing-sample", "--flavour", "focus-1.0", "--days", "12", "--accounts", "3", "--incident", "runaway",
                 "unit_error", str(out)]) == 0
    text = capsys.readouterr().out
    assert "runaway" in text and out.stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["detect", "/nonexistent.csv"], "/nonexistent.csv: no such file"),
        (["detect"], "name at least one export"),
        (["billing-sample", "--accounts", "1", "--incident", "runaway", "x.csv"], "--accounts 1 is too few"),
        (["billing-sample", "--days", "3", "x.csv"], "--days 3"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_tokenfuse_entry_point_routes_detect(export: tuple[Path, Manifest]) -> None:
    path, _ = export
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "tokenfuse", "detect", str(path), "--json"], capture_output=True,
                          text=True, timeout=120, cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["as_of"] == "2026-10-01"


def test_escalation_note_in_json(export: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]) -> None:
    path, m = export
    assert main(["detect", str(path), "--json", "--escalation"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (f,) = [f for f in doc["findings"] if f["kind"] == "runaway_inference"]
    assert f["escalation_note"].startswith(f"## Escalation: runaway Bedrock inference in account {_runaway_account(m)}")
    assert "Spike ratio:" in f["escalation_note"]


def test_as_of_beyond_the_data_is_refused(export: tuple[Path, Manifest], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = export
    assert main(["detect", str(path), "--as-of", "2026-10-05"]) == 2
    err = capsys.readouterr().err
    assert "--as-of 2026-10-05 is after the export's data: its last complete day is 2026-09-30" in err
    assert len(err.strip().splitlines()) == 1


def test_an_export_without_inference_rows_says_so(focus_sample: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # FinOps Foundation FOCUS sample data, CC BY 4.0 (see docs/billing.md for attribution).
    statement = "this export has no AI inference usage rows tokenfuse can analyse (1,000 rows, services: "
    html = tmp_path / "r.html"
    assert main(["detect", str(focus_sample), "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert statement[0].upper() + statement[1:] in text
    assert "No account flagged" not in text and "Budget advice" not in text
    page = html.read_text()
    assert statement[0].upper() + statement[1:] in page and "No account flagged" not in page
    assert main(["detect", str(focus_sample), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["analysable"] is False and doc["statement"].startswith(statement)
    assert doc["findings"] == [] and doc["rows"] == 1000


def test_a_billing_lag_lump_is_not_blamed_on_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lag.parquet"
    m = generate(str(out), "cur-2.0", days=45, accounts=2, incidents=["billing_lag"])
    assert main(["detect", str(out), "--json", "--escalation"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_float=Decimal)
    (f,) = [f for f in doc["findings"] if f["kind"] == "runaway_inference"]
    assert f["account"] == m.gateway_account and f["driver"] == "billing_lag"
    assert "tokenfuse reconcile" in f["likely_cause"]
    note = f["escalation_note"]
    assert note.startswith(f"## Escalation: billing-lag lump (not a runaway) in account {m.gateway_account}")
    assert "max_tokens" not in note and "output tokens" not in note and "tokenfuse reconcile" in note
    (b,) = [x for x in doc["findings"] if x["kind"] == "budget_advice" and x["account"] == m.gateway_account]
    assert b["excluded_days"] == ["2026-09-28"]
    assert main(["detect", str(out)]) == 0
    assert "BILLING LAG (not a runaway; run reconcile)" in capsys.readouterr().out
