"""The start-up summary and the warnings about configs that start but cannot serve."""

from __future__ import annotations

from tokenfuse.config import parse_config
from tokenfuse.gateway.summary import config_warnings, summary_lines


def test_summary_names_upstreams_keys_budgets_store_counters_guards() -> None:
    cfg = parse_config(
        "store: postgresql://tf:pw@db/x\ncounters: redis://:hunter2@r:6379/0\n"
        "upstreams: [{name: oa, protocol: openai, base_url: http://x}]\n"
        "keys: [{name: k, key: s, principal: p}]\nbudgets: [{name: b, limit: {usd: 1}}]\n"
        "guards: {loop: {enabled: false}}\n",
        "t.yaml",
    )
    text = "; ".join(summary_lines(cfg, runtime_keys=2))
    for part in ("upstreams: oa (openai)", "keys: 1 in the config, 2 at run time", "budgets: 1",
                 "guards: cache_miss, context_growth", "admin API: off"):
        assert part in text, text
    assert "pw" not in text and "hunter2" not in text
    assert config_warnings(cfg) == []


def test_no_upstreams_is_a_warning() -> None:
    (upstreams, keys) = config_warnings(parse_config("{}", "empty.yaml"))
    assert "no upstreams are configured" in upstreams and "empty.yaml" in upstreams
    assert "tokenfuse keys create" in keys
