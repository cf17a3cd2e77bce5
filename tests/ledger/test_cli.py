from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.ledger.conftest import make_row
from tokenfuse.cli import main as tokenfuse_main
from tokenfuse.ledger.cli import main, parse_time
from tokenfuse.ledger.query import usage_totals
from tokenfuse.ledger.writer import LedgerWriter

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    w = LedgerWriter(url)
    w.start()
    w.write(
        make_row(
            0, ts=NOW - 7200, model="claude-opus", principal="alice", output=1200, cost_usd=Decimal("0.09")
        )
    )
    w.write(
        make_row(1, ts=NOW - 60, model="claude-haiku", principal="bob", output=40, cost_usd=Decimal("0.0002"))
    )
    w.write(
        make_row(
            2, ts=NOW - 30, model="claude-haiku", principal="bob", outcome="refused", cost_usd=Decimal(0)
        )
    )
    w.close()
    path = tmp_path / "tokenfuse.yaml"
    path.write_text(f"store: {url}\n")
    return path


def test_json_output_is_usage_totals(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == usage_totals(f"sqlite:///{config.parent / 'ledger.db'}")
    assert out["requests"] == 2 and out["refused"] == 1 and out["cost_usd"] == "0.090200"


def test_json_filters(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "--json", "--principal", "alice"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["by_model"]) == ["claude-opus"]
    since = datetime.fromtimestamp(NOW - 120, UTC).isoformat()
    assert main(["--config", str(config), "--json", "--since", since]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["by_model"]) == ["claude-haiku"] and out["cost_usd"] == "0.000200"


def test_table_output(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tokenfuse_main(["usage", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "REQUESTS",
        "INPUT_UNCACHED",
        "CACHE_READ",
        "CACHE_WRITE",
        "OUTPUT",
        "COST_USD",
    ]
    body = [ln.split() for ln in lines if ln.startswith(("claude", "TOTAL"))]
    # Most expensive model first; columns aligned, so every row splits the same way.
    assert body == [
        ["claude-opus", "1", "10", "20", "7", "1,200", "0.090000"],
        ["claude-haiku", "1", "20", "40", "14", "45", "0.000200"],
        ["TOTAL", "2", "30", "60", "21", "1,245", "0.090200"],
    ]
    assert len({len(ln) for ln in lines[:-1] if not ln.startswith("-")}) == 1
    assert lines[-1] == "refused (not sent upstream): 1"


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: mysql://x\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml" in err and "store" in err
    assert main(["--config", str(tmp_path / "absent.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_time_is_one_line_and_exit_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "24h" in err


def test_unreachable_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pg.yaml"
    cfg.write_text("store: postgresql://postgres:pw-s3cret@127.0.0.1:1/test?connect_timeout=2\n")
    assert main(["--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the ledger" in err and "pw-s3cret" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC).timestamp()),
        ("2026-11-01T12:30", datetime(2026, 11, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2026-11-01T12:30:00Z", datetime(2026, 11, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2026-11-01T14:30:00+02:00", datetime(2026, 11, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("24h", NOW - 86400),
        ("7d", NOW - 7 * 86400),
        ("90m", NOW - 5400),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == expected
