"""`tokenfuse demo`, the Quickstart's main job, end to end."""

from __future__ import annotations

import io
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from tokenfuse.demo import run
from tokenfuse.ledger.query import usage_totals


def test_demo_meters_every_session_stops_the_loop_and_catches_the_cache_miss(tmp_path: Path) -> None:
    before = logging.getLogger("tokenfuse").level
    out = io.StringIO()
    db = tmp_path / "demo.db"
    assert run(out, keep_db=str(db)) == 0
    text = out.getvalue()
    assert logging.getLogger("tokenfuse").level == before
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(r"^(\w+-agent)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)$", text, re.M)
    }
    assert set(rows) == {"openai-agent", "anthropic-agent", "uncached-agent", "bedrock-agent"}
    # Each session is capped at 6 requests; the printed figures are the ledger's.
    for session, (requests, *_, cost) in rows.items():
        assert requests == "6"
        assert Decimal(cost) == Decimal(usage_totals(f"sqlite:///{db}", session=session)["cost_usd"])
    assert int(rows["anthropic-agent"][2]) > 0 and int(rows["uncached-agent"][2]) == 0  # cache reads
    assert "Stop now and do not retry" in text
    assert "cache_miss guard" in text and "uncached-agent" in text.split("Live guards noticed:")[1]


def test_demo_cleans_up_and_prints_a_config_a_user_can_start_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from tokenfuse.cli import main as tokenfuse_main
    from tokenfuse.config import parse_config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's temp folder goes here
    out = io.StringIO()
    assert run(out) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tokenfuse-demo-")] == []
    text = out.getvalue()
    assert "<your config>" not in text
    starter = text.split("start from this config:", 1)[1]
    env = {"TF_ADMIN_TOKEN": "a", "OPENAI_API_KEY": "b", "ANTHROPIC_API_KEY": "c", "TF_KEY_ALICE": "d"}
    config = parse_config(starter, "starter", env)
    assert {u.name for u in config.upstreams} == {"openai", "anthropic"} and config.keys[0].team == "platform"
    kept = tmp_path / "kept" / "demo.db"
    kept.parent.mkdir()
    assert run(io.StringIO(), keep_db=str(kept)) == 0
    assert tokenfuse_main(["usage", "--config", str(kept.with_suffix(".yaml")), "--by", "principal"]) == 0
