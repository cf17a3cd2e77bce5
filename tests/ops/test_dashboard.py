"""The shipped Grafana dashboard queries only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.ledger.conftest import make_row
from tokenfuse.ops.gauges import ControlState, control_metrics
from tokenfuse.ops.metrics import RequestMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "tokenfuse-dashboard.json"


def test_dashboard_metrics_exist() -> None:
    m = RequestMetrics()
    m.observe(make_row(0))
    families = [*m.collect(), *control_metrics(ControlState())]
    exported: set[str] = set()
    for f in families:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
        exported |= {f.name + s for s in suffixes.get(f.type, ("",))}
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\btokenfuse_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
