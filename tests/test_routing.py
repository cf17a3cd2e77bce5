"""Budget-aware routing rules: validation at load, matching, and the budget levels they read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from tokenfuse.config import Config, ConfigError, KeyConfig, parse_config
from tokenfuse.gateway.reload import build_runtime
from tokenfuse.gateway.upstream import Router
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.pricing import PriceBook
from tokenfuse.routing import BudgetLevels, Routed, RoutingTable, compile_routing

BASE = """
upstreams:
  - {name: anthropic, protocol: anthropic, base_url: "http://127.0.0.1:1"}
  - {name: openai, protocol: openai, base_url: "http://127.0.0.1:1", models: ["gpt-*", "small-model"]}
  - {name: bedrock, protocol: bedrock, base_url: "http://127.0.0.1:1", region: us-east-1}
prices:
  big-model: {input: 15, output: 75}
  small-model: {input: 1, output: 5}
budgets:
  - {name: droid-daily, match: {workflow: droid}, window: day, limit: {usd: 10}}
"""


def config(routing: str, base: str = BASE) -> Config:
    return parse_config(base + routing, "t.yaml")


def table(routing: str, base: str = BASE) -> RoutingTable:
    cfg = config(routing, base)
    book = PriceBook.build({m: p.model_dump(exclude_none=True) for m, p in cfg.prices.items()})
    compiled = compile_routing(cfg, book, Router(cfg))
    assert compiled is not None
    return compiled


def key(
    name: str = "alice-droid", workflow: str = "droid", team: str | None = None, tags: Sequence[str] = ()
) -> KeyConfig:
    return KeyConfig(
        name=name, key=f"secret-{name}", principal="alice", workflow=workflow, team=team, tags=list(tags)
    )


def status(name: str, percent: float, source: str = "config") -> BudgetStatus:
    zero = Decimal(0)
    return BudgetStatus(
        name, "day", None, None, Decimal(10), None, {}, zero, 0, {}, zero, 0, {}, percent, source
    )


BUDGET_RULE = """
routing:
  - name: save
    match: {workflow: [droid, batch]}
    from: "big-*"
    to: small-model
    when: {budget: droid-daily, above_pct: 80}
"""


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing", "fragment"),
    [
        (
            "routing: [{name: r, from: a, to: b, when: {budget: nope, above_pct: 80}}]",
            "routing[0] (name: r).when.budget: no budget is named 'nope'; name one under `budgets:` (droid-daily)",
        ),
        (
            "routing: [{name: r, from: a, to: b, when: {budget: droid-daily}}]",
            "`budget` and `above_pct` go together",
        ),
        ("routing: [{name: r, from: a, to: b, when: {}}]", "needs a budget condition"),
        ("routing: [{name: r, from: a, to: b, when: {budget: droid-daily, above_pct: 180}}]", "above_pct"),
        ("routing: [{name: r, from: a, to: b, when: {header: {}}}]", "empty header map"),
        (
            "routing: [{name: r, from: a, to: b, when: {header: {'bad header': x}}}]",
            "not an HTTP header name",
        ),
        ("routing: [{name: r, form: a, to: b}]", "routing[0] (name: r).form: unknown key"),
        ("routing: [{name: r, to: b}]", "routing[0] (name: r).from: required key is missing"),
        (
            "routing: [{name: r, from: a, to: b}, {name: r, from: c, to: d}]",
            "two routing rules are named 'r'",
        ),
        (
            "routing: [{name: r, from: a, to: b, match: {protocol: grpc}}]",
            "routing[0] (name: r).match.protocol",
        ),
    ],
)
def test_config_errors_name_the_rule_and_the_fix(routing: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(routing)
    assert fragment in str(err.value)


def test_target_must_be_priced() -> None:
    with pytest.raises(ConfigError) as err:
        table("routing: [{name: r, from: big-model, to: tiny-modle}]")
    msg = str(err.value)
    assert "t.yaml: routing[0] (name: r).to: model 'tiny-modle' has no known price" in msg
    assert "add it under `prices:`" in msg


def test_target_must_have_an_upstream_of_the_rules_protocol() -> None:
    # The openai upstream serves only gpt-* and small-model.
    with pytest.raises(ConfigError, match="to: no openai upstream serves 'big-model'"):
        table("routing: [{name: r, match: {protocol: openai}, from: small-model, to: big-model}]")
    narrow = BASE.replace(
        '{name: anthropic, protocol: anthropic, base_url: "http://127.0.0.1:1"}',
        '{name: anthropic, protocol: anthropic, base_url: "http://127.0.0.1:1", models: ["big-*"]}',
    ).replace("region: us-east-1}", "region: us-east-1, models: [amazon.*]}")
    # gpt-4o is served over openai, big-model only over anthropic.
    with pytest.raises(ConfigError, match="'gpt-4o' is served over openai but 'big-model' is not"):
        table("routing: [{name: r, from: gpt-4o, to: big-model}]", narrow)
    with pytest.raises(ConfigError, match=r"to: no openai upstream serves 'amazon\.nova-micro-v1:0'"):
        table(
            "routing: [{name: r, from: 'gpt-*', to: 'amazon.nova-micro-v1:0', match: {protocol: openai}}]",
            narrow,
        )
    nowhere = narrow.replace('models: ["big-*"]', 'models: ["claude-*"]')
    with pytest.raises(ConfigError, match="to: no upstream serves 'big-model'"):
        table("routing: [{name: r, from: 'gpt-*', to: big-model}]", nowhere)


def test_build_runtime_refuses_a_rule_that_cannot_be_served_and_compiles_one_that_can() -> None:
    with pytest.raises(ConfigError, match="no known price"):
        build_runtime(config("routing: [{name: r, from: big-model, to: nowhere-model}]"), None)
    assert build_runtime(config(""), None).routing is None
    rt = build_runtime(config(BUDGET_RULE), None)
    assert rt.routing is not None and rt.routing.budgets == {"droid-daily"}


def test_every_error_is_reported_in_one_pass() -> None:
    with pytest.raises(ConfigError) as err:
        table("routing: [{name: a, from: x, to: nope-1}, {name: b, from: y, to: nope-2}]")
    assert "(name: a).to" in str(err.value) and "(name: b).to" in str(err.value)


# -- matching ----------------------------------------------------------------


def test_budget_rule_routes_at_or_above_the_threshold_only() -> None:
    t = table(BUDGET_RULE)
    levels = {"droid-daily": 79.9}

    def decide() -> Routed | None:
        return t.decide(key(), "anthropic", "messages", "big-model", {}, None, levels.get)

    assert decide() is None
    levels["droid-daily"] = 80.0
    assert decide() == Routed("save", "big-model", "small-model")
    levels.clear()  # never heard of: not routed
    assert decide() is None


def test_match_fields_and_from_glob() -> None:
    t = table(BUDGET_RULE)
    full = {"droid-daily": 95.0}.get
    assert t.decide(key(workflow="batch"), "anthropic", "messages", "big-model", {}, None, full) is not None
    assert t.decide(key(workflow="chat"), "anthropic", "messages", "big-model", {}, None, full) is None
    assert t.decide(key(), "anthropic", "messages", "other-model", {}, None, full) is None
    # Already the target: nothing to route.
    assert t.decide(key(), "anthropic", "messages", "small-model", {}, None, full) is None
    t2 = table("""
routing:
  - {name: k, match: {key: [alice-droid], team: platform, tags: [agents, x]}, from: big-model, to: small-model}
""")
    assert (
        t2.decide(key(team="platform", tags=["agents"]), "anthropic", "messages", "big-model", {}) is not None
    )
    assert t2.decide(key(team="platform"), "anthropic", "messages", "big-model", {}) is None
    assert t2.decide(key(team="other", tags=["agents"]), "anthropic", "messages", "big-model", {}) is None
    assert (
        t2.decide(key(name="bob", team="platform", tags=["agents"]), "anthropic", "messages", "big-model", {})
        is None
    )


def test_from_matches_every_spelling_of_a_model() -> None:
    t = table("routing: [{name: r, from: 'claude-opus-4*', to: small-model}]")
    for sent in ("claude-opus-4-1-20250805", "Claude-Opus-4-1", "us.anthropic.claude-opus-4-1-20250805-v1:0"):
        assert t.decide(key(), "anthropic", "messages", sent, {}) is not None, sent
    assert t.decide(key(), "anthropic", "messages", "claude-sonnet-4-5", {}) is None


def test_header_rule_and_first_rule_wins() -> None:
    t = table("""
routing:
  - {name: light, from: "big-*", to: small-model, when: {header: {X-Step: [light, trivial]}}}
  - {name: other, from: "big-*", to: gpt-4o-mini}
""")
    assert t.decide(key(), "openai", "chat.completions", "big-model", {"x-step": "light"}) == Routed(
        "light", "big-model", "small-model"
    )
    assert t.decide(key(), "openai", "chat.completions", "big-model", {"x-step": "heavy"}) == Routed(
        "other", "big-model", "gpt-4o-mini"
    )


def test_rule_routes_only_protocols_with_an_upstream_for_the_target() -> None:
    # gpt-4o-mini is served by openai only (anthropic and bedrock upstreams serve everything, too).
    base = BASE.replace(
        '{name: anthropic, protocol: anthropic, base_url: "http://127.0.0.1:1"}',
        '{name: anthropic, protocol: anthropic, base_url: "http://127.0.0.1:1", models: ["claude-*"]}',
    )
    base = base.replace("region: us-east-1}", "region: us-east-1, models: ['anthropic.*']}")
    t = table("routing: [{name: r, from: 'big-*', to: gpt-4o-mini}]", base)
    assert t.decide(key(), "openai", "chat.completions", "big-model", {}) is not None
    assert t.decide(key(), "anthropic", "messages", "big-model", {}) is None


def test_bedrock_invoke_model_stays_within_its_model_family() -> None:
    t = table("""
routing:
  - {name: nova, match: {protocol: bedrock}, from: "anthropic.claude-*", to: amazon.nova-micro-v1:0}
""")
    sent = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    body = {"anthropic_version": "bedrock-2023-05-31", "messages": [], "max_tokens": 10}
    assert t.decide(key(), "bedrock", "converse", sent, {}) is not None
    assert t.decide(key(), "bedrock", "invoke", sent, {}, body) is None  # an Anthropic body Nova cannot read


def test_routed_header_is_printable_ascii() -> None:
    assert (
        Routed("r", "big\r\nx-evil: 1\u00e9", "small-model").header()
        == "big??x-evil: 1? -> small-model (rule r)"
    )


# -- budget levels -------------------------------------------------------------


def test_levels_come_from_settles_without_sessions() -> None:
    levels = BudgetLevels()
    levels.observe([status("droid-daily", 81.5), status("session:alice/s1", 99.0, "session")])
    assert levels.percent("droid-daily") == 81.5
    assert levels.levels() == {"droid-daily": 81.5}


def test_refresh_takes_a_snapshot_but_keeps_newer_settles() -> None:
    async def main() -> None:
        levels = BudgetLevels()
        gate = asyncio.Event()

        async def snapshot() -> list[BudgetStatus]:
            await gate.wait()
            return [status("a", 10.0), status("b", 20.0)]

        levels.source = snapshot
        levels.observe([status("gone", 50.0)])
        task = asyncio.ensure_future(levels.refresh())
        await asyncio.sleep(0)
        levels.observe([status("a", 85.0)])  # settled while the snapshot was in flight
        gate.set()
        await task
        # "gone" was not in the snapshot: a budget removed by a reload is forgotten.
        assert levels.levels() == {"a": 85.0, "b": 20.0}

    asyncio.run(main())


def test_reading_a_level_refreshes_in_the_background_at_most_every_interval() -> None:
    async def main() -> None:
        calls = 0

        async def snapshot() -> list[BudgetStatus]:
            nonlocal calls
            calls += 1
            return [status("b", 90.0)]

        levels = BudgetLevels(refresh_s=3600)
        levels.source = snapshot
        assert levels.percent("b") is None  # the first read starts a refresh, never waits for it
        for _ in range(5):
            await asyncio.sleep(0)
        assert levels.percent("b") == 90.0
        for _ in range(100):
            levels.percent("b")
            await asyncio.sleep(0)
        assert calls == 1

    asyncio.run(main())


def test_a_failed_refresh_keeps_the_last_levels() -> None:
    async def main() -> None:
        async def down() -> list[BudgetStatus]:
            raise ConnectionError("redis down")

        levels = BudgetLevels()
        levels.observe([status("b", 70.0)])
        levels.source = down
        await levels.refresh()
        assert levels.levels() == {"b": 70.0}

    asyncio.run(main())


def test_a_reload_with_an_unservable_rule_keeps_the_running_config(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tokenfuse.config import load_config
    from tokenfuse.control.keys import RuntimeKeys
    from tokenfuse.gateway.reload import Reloader

    path = tmp_path / "tokenfuse.yaml"
    path.write_text(BASE)
    gw = SimpleNamespace(limiter=None, admin=None, caching=None, runtime_keys=RuntimeKeys())
    gw.runtime = build_runtime(load_config(path), gw.runtime_keys)
    reloader = Reloader(gw)
    path.write_text(BASE + "routing: [{name: r, from: big-model, to: no-such-model}]\n")
    bad = asyncio.run(reloader.reload())
    assert not bad.ok and "routing[0] (name: r).to: model 'no-such-model' has no known price" in bad.message
    assert gw.runtime.routing is None
    path.write_text(BASE + BUDGET_RULE)
    good = asyncio.run(reloader.reload())
    assert good.ok and "routing changed" in good.changes
    assert gw.runtime.routing is not None and gw.runtime.routing.rules[0].name == "save"
