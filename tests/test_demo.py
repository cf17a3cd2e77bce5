"""`tokenfuse demo`, the Quickstart's main job, end to end."""

from __future__ import annotations

import io
import logging
import re
from decimal import Decimal
from pathlib import Path

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
