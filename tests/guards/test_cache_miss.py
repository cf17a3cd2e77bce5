"""Cache-miss guard: scripted agent loops with and without a working cache."""

from __future__ import annotations

import itertools
from decimal import Decimal

from tests.guards.agent import CLAUDE, NO_CACHE, Agent, cached, ctx, request, uncached
from tokenfuse.config import CacheMissGuardConfig
from tokenfuse.guards.base import Finding, Prompt
from tokenfuse.guards.cache_miss import CacheMissGuard, savings
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.usage import Usage

SIZES = [2000, 3000, 4000, 5000, 6000]


def guard(**cfg: object) -> CacheMissGuard:
    return CacheMissGuard(CacheMissGuardConfig.model_validate({"min_usd": 0, **cfg}))


def run(
    g: CacheMissGuard,
    agent: Agent,
    usages: list[Usage],
    price: Price | None = CLAUDE,
    c: RequestContext | None = None,
) -> list[Finding | None]:
    out = []
    for i, usage in enumerate(usages):
        info, raw = request(agent.body())
        out.append(
            g.observe(
                c or ctx(),
                Prompt(info.body, raw),
                usage,
                price.cost(usage) if price else Decimal(0),
                price,
                1000.0 + i,
            )
        )
        agent.step(f"step {i}")
    return out


def test_cache_never_engaging_is_reported_with_the_dollar_math() -> None:
    findings = run(guard(), Agent(), [uncached(n) for n in SIZES[:4]])
    assert findings[:3] == [None, None, None]
    f = findings[3]
    assert f is not None and f.guard == "cache_miss" and f.subject.startswith("session s1")
    # Requests 2..4 each re-sent the whole previous prompt uncached.
    repeated = 2000 + 3000 + 4000
    expected = Decimal(repeated) * (CLAUDE.input - Decimal("0.30")) / 10**6
    assert Decimal(f.data["savings_usd"]) == expected == Decimal("0.0243")
    assert f.data["repeated_uncached_tokens"] == repeated and f.data["requests"] == 3
    assert "9,000 × ($3.00/M − $0.30/M) = $0.0243" in f.message


def test_a_working_cache_is_never_reported() -> None:
    usages = [uncached(SIZES[0])] + [cached(n, p) for p, n in itertools.pairwise(SIZES)]
    assert run(guard(), Agent(markers=True), usages) == [None] * len(SIZES)


def test_markers_that_move_each_turn_do_not_hide_the_continuation() -> None:
    # Markers present but the cache still reads nothing: a miss all the same.
    findings = run(guard(), Agent(markers=True), [uncached(n) for n in SIZES[:4]])
    assert findings[3] is not None


def test_models_without_caching_are_ignored() -> None:
    assert run(guard(), Agent(model="plain-model"), [uncached(n) for n in SIZES], NO_CACHE) == [None] * 5
    assert run(guard(), Agent(), [uncached(n) for n in SIZES], None) == [None] * 5


def test_a_hit_resets_the_streak() -> None:
    usages = [uncached(2000), uncached(3000), uncached(4000), cached(5000, 4000), uncached(6000)]
    assert run(guard(), Agent(), usages) == [None] * 5


def test_min_usd_and_min_prefix_tokens() -> None:
    assert all(f is None for f in run(guard(min_usd="1.00"), Agent(), [uncached(n) for n in SIZES]))
    # Prompts below the smallest cacheable prefix are neither misses nor hits.
    small = [uncached(n) for n in (300, 400, 500, 600, 700)]
    assert all(f is None for f in run(guard(), Agent(), small))
    assert run(guard(min_prefix_tokens=200), Agent(), small)[3] is not None


def test_prompts_that_do_not_continue_the_previous_one_are_not_repeats() -> None:
    g = guard()
    agent = Agent()
    out = []
    for i, n in enumerate(SIZES):
        info, raw = request(agent.body())
        out.append(g.observe(ctx(), Prompt(info.body, raw), uncached(n), Decimal(0), CLAUDE, float(i)))
        # The agent rewrites its last message instead of appending: history is not a prefix.
        agent.messages[-1] = {"role": "user", "content": [{"type": "text", "text": f"rewritten {i}"}]}
    assert out == [None] * 5


def test_interleaved_conversations_of_one_key_are_tracked_apart() -> None:
    g = guard()
    a, b = Agent(task="task A"), Agent(task="task B")
    findings = []
    for i, n in enumerate(SIZES[:4]):
        for agent in (a, b):
            info, raw = request(agent.body())
            c = ctx(session=None)
            findings.append(g.observe(c, Prompt(info.body, raw), uncached(n), Decimal(0), CLAUDE, float(i)))
            agent.step(f"r{i}")
    assert findings[:6] == [None] * 6
    assert findings[6] is not None and findings[7] is not None
    assert findings[6].subject == "key alice-droid, model test-claude"


def test_long_context_tier_rates_are_used() -> None:
    long = Price("big", Decimal(6), Decimal(22), cache_read=Decimal("0.60"))
    price = Price(
        "big",
        Decimal(3),
        Decimal(15),
        cache_read=Decimal("0.30"),
        long_context_threshold=200_000,
        long_context=long,
    )
    findings = run(guard(), Agent(), [uncached(n) for n in (150_000, 190_000, 210_000, 220_000)], price)
    f = findings[3]
    assert f is not None
    expected = (150_000 * Decimal("2.70") + (190_000 + 210_000) * Decimal("5.40")) / 10**6
    assert Decimal(f.data["savings_usd"]) == expected
    assert "150,000 × ($3.00/M − $0.30/M) + 400,000 × ($6.00/M − $0.60/M)" in f.message


def test_savings_is_exact_decimal() -> None:
    assert savings({(Decimal("3"), Decimal("0.3")): 6_470_000_000}) == Decimal("17469.0")
