from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tokenfuse.billing.cli import main
from tokenfuse.billing.detect import detect
from tokenfuse.billing.errors import BillingInputError
from tokenfuse.billing.export import export_focus
from tokenfuse.billing.load import load
from tokenfuse.billing.reconcile import read_ledger, reconcile
from tokenfuse.billing.sample import generate
from tokenfuse.ledger.schema import COLUMN_NAMES, connect


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    generate(str(tmp_path / "bill.csv"), "cur-2.0", days=20, accounts=1, ledger_url=url)
    conn = connect(url)
    base = dict.fromkeys(COLUMN_NAMES)
    base.update(ts=1790000000.0, request_id="anth-1", key_name="team-a", principal="alice", workflow="triage",
                session="s-1", protocol="anthropic", model="claude-sonnet-4-5", input_uncached=1000, cache_read=0,
                cache_write=0, cache_write_1h=0, output=100, cost_usd="0.004500", estimated=0, outcome="ok")
    conn.execute(f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})",
                 tuple(base[c] for c in COLUMN_NAMES))
    conn.close()
    return url


def test_export_preserves_tokens_and_cost(ledger: str, tmp_path: Path) -> None:
    out = tmp_path / "focus.parquet"
    n = export_focus(ledger, str(out))
    con = duckdb.connect()
    rows = con.execute(f"SELECT count(*), sum(BilledCost), sum(ConsumedQuantity) FROM read_parquet('{out}')").fetchone()
    assert rows is not None and rows[0] == n
    db = connect(ledger)
    costs = [Decimal(r[0]) for r in db.execute("SELECT cost_usd FROM requests WHERE outcome = 'ok'")]
    tokens = db.execute(
        "SELECT sum(input_uncached + cache_read + cache_write + cache_write_1h + output) FROM requests"
    ).fetchone()
    db.close()
    assert rows[1] == sum(costs, Decimal(0))
    assert rows[2] == tokens[0]
    anth = con.execute(
        f"SELECT x_Principal, x_Workflow, x_Session, SubAccountId, ProviderName, x_TokenClass, ConsumedQuantity "
        f"FROM read_parquet('{out}') WHERE x_Session = 's-1' ORDER BY x_TokenClass"
    ).fetchall()
    assert anth == [("alice", "triage", "s-1", "team-a", "Anthropic", "input_uncached", 1000),
                    ("alice", "triage", "s-1", "team-a", "Anthropic", "output", 100)]


def test_detect_and_reconcile_run_on_the_export(ledger: str, tmp_path: Path) -> None:
    out = tmp_path / "focus.parquet"
    export_focus(ledger, str(out))
    exp = load([str(out)])
    assert exp.flavours == ("focus-1.2",)
    det = detect(exp)
    assert {r.account for r in det.runaways} == {"sample", "team-a"}
    # The ledger reconciles with its own export: same tokens, no findings.
    rec = reconcile(exp, read_ledger(ledger, protocol=None))
    assert rec.findings == []


def test_export_cli_with_config(ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text("store: ${LEDGER_URL:-sqlite:///nowhere.db}\n")
    monkeypatch.setenv("LEDGER_URL", ledger)
    out = tmp_path / "o.parquet"
    assert main(["export", "--config", str(cfg), "--focus", str(out)]) == 0
    assert out.exists() and "FOCUS 1.2 rows" in capsys.readouterr().out
    monkeypatch.delenv("LEDGER_URL")
    assert main(["export", "--config", str(cfg), "--focus", str(out)]) == 2
    assert "nowhere.db" in capsys.readouterr().err


@pytest.mark.parametrize("read", ["export", "reconcile"])
def test_an_unreachable_ledger_is_one_clear_error(read: str, tmp_path: Path) -> None:
    url = "postgresql://tokenfuse:s3cret@127.0.0.1:1/ledger?connect_timeout=2"
    with pytest.raises(BillingInputError) as exc:
        if read == "export":
            export_focus(url, str(tmp_path / "out.parquet"))
        else:
            read_ledger(url)
    message = str(exc.value)
    assert message.startswith("store: " if read == "export" else "--ledger: ")
    assert "cannot open the ledger" in message and "s3cret" not in message


def test_export_format_comes_from_the_extension(ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenfuse.billing.export import output_format

    assert output_format("a/x.PARQUET") == "parquet"
    assert output_format("x.csv.gz") == "csv.gz"
    assert output_format("noext", "csv") == "csv"
    with pytest.raises(BillingInputError, match="cannot tell the format"):
        output_format("ledger.json")
    with pytest.raises(BillingInputError, match="--format parquet but"):
        output_format("x.csv", "parquet")
    json_out = tmp_path / "ledger.json"
    assert main(["export", "--store", ledger, "--focus", str(json_out)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err and not json_out.exists()
    gz = tmp_path / "focus.csv.gz"
    assert main(["export", "--store", ledger, "--focus", str(gz)]) == 0
    assert gz.read_bytes()[:2] == b"\x1f\x8b"


def test_export_since_until(ledger: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "window.csv"
    # Only the anthropic row at ts 1790000000 (2026-09-21T14:13:20Z) falls in this second.
    assert main(["export", "--store", ledger, "--focus", str(out), "--since", "2026-09-21T14:13:20Z",
                 "--until", "2026-09-21T14:13:21Z"]) == 0
    rows = duckdb.connect().execute(f"SELECT DISTINCT x_Session FROM read_csv('{out}')").fetchall()
    assert rows == [("s-1",)]
    assert main(["export", "--store", ledger, "--focus", str(out), "--since", "2001-01-01",
                 "--until", "2001-01-02"]) == 2
    assert "in that time range" in capsys.readouterr().err
