"""`tokenfuse usage --by`: grouped totals, one money precision, table / CSV / JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.ledger.conftest import make_row
from tokenfuse.cli import main as tokenfuse_main
from tokenfuse.ledger.cli import main, money
from tokenfuse.ledger.query import Filters, usage_by
from tokenfuse.ledger.writer import LedgerWriter

DAY1 = datetime(2026, 11, 22, 23, 59, tzinfo=UTC).timestamp()
DAY2 = datetime(2026, 11, 23, 0, 1, tzinfo=UTC).timestamp()


def _fill(url: str) -> None:
    w = LedgerWriter(url)
    w.start()
    w.write(make_row(0, ts=DAY1, principal="alice", workflow="droid", key_name="alice-droid",
                     model="m-big", cost_usd=Decimal("0.09"), cache_saved_usd=Decimal("0.81")))
    w.write(make_row(1, ts=DAY2, principal="bob", workflow="batch", key_name="bob-batch",
                     model="m-small", cost_usd=Decimal("0.000000075")))
    w.write(make_row(2, ts=DAY2, principal="bob", workflow="batch", key_name="bob-batch",
                     model="m-small", cost_usd=Decimal("0.0002")))
    w.write(make_row(3, ts=DAY2, principal="bob", workflow="batch", key_name="bob-batch",
                     outcome="refused", cost_usd=Decimal(0)))
    w.write(make_row(4, ts=DAY2, principal=None, workflow=None, key_name=None, model=None,
                     outcome="unauthorized", cost_usd=Decimal(0)))
    w.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _fill(url)
    path = tmp_path / "tokenfuse.yaml"
    path.write_text(f"store: {url}\n")
    return path


def test_usage_by_every_grouping(store_url: str) -> None:
    _fill(store_url)
    by_principal = {g.name: g for g in usage_by(store_url, "principal")}
    assert set(by_principal) == {"alice", "bob", "(none)"}
    bob = by_principal["bob"]
    assert (bob.requests, bob.refused, bob.cost_usd) == (2, 1, Decimal("0.000200075"))
    assert by_principal["(none)"].refused == 1
    assert {g.name for g in usage_by(store_url, "workflow")} == {"droid", "batch", "(none)"}
    assert {g.name for g in usage_by(store_url, "key")} == {"alice-droid", "bob-batch", "(none)"}
    assert {g.name for g in usage_by(store_url, "model")} == {"m-big", "m-small", "test-model", "(none)"}
    days = usage_by(store_url, "day")
    assert [(g.name, g.cost_usd) for g in days] == [
        ("2026-11-22", Decimal("0.09")), ("2026-11-23", Decimal("0.000200075"))
    ]
    only_bob = usage_by(store_url, "day", Filters(principal="bob"))
    assert [g.name for g in only_bob] == ["2026-11-23"]
    assert {g.name for g in usage_by(store_url, "team")} == {"(none)"}
    with pytest.raises(ValueError, match="cannot group by"):
        usage_by(store_url, "tenant")


def test_money_has_one_precision() -> None:
    assert money([Decimal("0.09"), Decimal("0.000000075"), Decimal(0)]) == ["0.090000000", "0.000000075", "0.000000000"]
    assert money([Decimal("1.5"), Decimal("12")]) == ["1.500000", "12.000000"]


def test_table_by_principal(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tokenfuse_main(["usage", "--config", str(config), "--by", "principal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "PRINCIPAL", "REQUESTS", "REFUSED", "INPUT_UNCACHED", "CACHE_READ", "CACHE_WRITE", "OUTPUT", "COST_USD",
        "CACHE_SAVED_USD",
    ]
    body = [ln.split() for ln in lines if not ln.startswith(("-", "PRINCIPAL"))]
    assert [r[0] for r in body] == ["alice", "bob", "(none)", "TOTAL"]  # most spend first
    costs = [r[-2] for r in body]
    assert costs == ["0.090000000", "0.000200075", "0.000000000", "0.090200075"]
    assert [r[-1] for r in body] == ["0.810000", "0.000000", "0.000000", "0.810000"]
    assert len({len(c.split(".")[1]) for c in costs}) == 1
    assert len({len(ln) for ln in lines if not ln.startswith("-")}) == 1


def test_csv_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "--by", "day", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["day", "requests", "refused", "input_uncached", "cache_read", "cache_write", "output",
                       "cost_usd", "cache_saved_usd"]
    assert [r[0] for r in rows[1:]] == ["2026-11-22", "2026-11-23", "TOTAL"]
    assert rows[-1][-2:] == ["0.090200075", "0.810000"]
    assert main(["--config", str(config), "--by", "workflow", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["by"] == "workflow" and doc["groups"][0] == {
        "workflow": "droid", "requests": 1, "refused": 0, "input_uncached": 10, "cache_read": 20,
        "cache_write": 7, "output": 5, "cost_usd": "0.090000000", "cache_saved_usd": "0.810000",
    }
    assert doc["total"]["cost_usd"] == "0.090200075" and doc["total"]["refused"] == 2


def test_by_model_table_uses_one_precision(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config)]) == 0
    costs = [ln.split()[-1] for ln in capsys.readouterr().out.splitlines() if ln.startswith(("m-", "TOTAL"))]
    assert costs == ["0.090000000", "0.000200075", "0.090200075"]
    assert main(["--config", str(config), "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model,requests") and out[1].endswith(",0.090000000")
