"""Context-growth guard: steadily growing input vs stable input, and the projection."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.guards.agent import CLAUDE, Agent, ctx, request, uncached
from tokenfuse.config import ContextGrowthGuardConfig
from tokenfuse.guards.base import Finding, Prompt
from tokenfuse.guards.context_growth import ContextGrowthGuard, project
from tokenfuse.usage import Usage


def guard(**cfg: object) -> ContextGrowthGuard:
    return ContextGrowthGuard(
        ContextGrowthGuardConfig.model_validate(
            {"min_requests": 5, "project_steps": 10, "min_projected_usd": 0, **cfg}
        )
    )


def run(g: ContextGrowthGuard, sizes: list[int], output: int = 100) -> list[Finding | None]:
    agent = Agent()
    out = []
    for i, n in enumerate(sizes):
        usage = uncached(n, output)
        info, raw = request(agent.body())
        out.append(g.observe(ctx(), Prompt(info.body, raw), usage, CLAUDE.cost(usage), CLAUDE, float(i)))
        agent.step(f"step {i}")
    return out


def brute_force(last: int, growth: Decimal, steps: int, usage_in: Usage, cost_out: Decimal) -> Decimal:
    """The projection, step by step: input at the last request's effective rate, plus output."""
    per_token = CLAUDE.cost(usage_in) / last
    total = Decimal(0)
    for j in range(1, steps + 1):
        total += (last + j * growth) * per_token + cost_out
    return total


def test_linear_growth_is_reported_with_the_projection() -> None:
    sizes = [1000 * (i + 1) for i in range(5)]  # 1,000 .. 5,000: +1,000 per step
    findings = run(guard(), sizes)
    assert findings[:4] == [None] * 4
    f = findings[4]
    assert f is not None and f.guard == "context_growth"
    expected = brute_force(5000, Decimal(1000), 10, Usage(input_uncached=5000), 100 * CLAUDE.output / 10**6)
    assert Decimal(f.data["projected_usd"]) == expected
    assert f.data["projected_input_tokens"] == 10 * 5000 + 1000 * 55
    assert "1,000 → 5,000 tokens (+1,000 per step)" in f.message
    assert "10 × 5,000 + 1,000 × 55 ≈ 105,000 input tokens" in f.message
    assert Decimal(f.data["spent_usd"]) == sum(CLAUDE.cost(uncached(n)) for n in sizes)


def test_stable_or_shrinking_context_is_not_reported() -> None:
    assert run(guard(), [3000] * 8) == [None] * 8
    # Growth interrupted by a summarisation restarts the streak.
    assert run(guard(), [1000, 2000, 3000, 4000, 1500, 2500, 3500, 4500]) == [None] * 8


def test_cheap_projections_are_not_reported() -> None:
    assert all(f is None for f in run(guard(min_projected_usd="5"), [1000 * (i + 1) for i in range(8)]))
    grows_fast = [20_000 * (i + 1) for i in range(8)]
    assert run(guard(min_projected_usd="5"), grows_fast)[4] is not None


@pytest.mark.parametrize(
    ("first", "last", "seen", "steps"), [(1000, 5000, 5, 10), (100, 103, 4, 7), (10, 10_000, 9, 1)]
)
def test_projection_matches_a_step_by_step_sum(first: int, last: int, seen: int, steps: int) -> None:
    growth = Decimal(last - first) / (seen - 1)
    p = project(first, last, seen, steps, Decimal("0.015"), Decimal("0.002"))
    tokens = sum((last + j * growth for j in range(1, steps + 1)), Decimal(0))
    assert p.input_tokens == int(tokens.to_integral_value())
    assert p.output_usd == steps * Decimal("0.002")
    assert p.usd == p.input_tokens * Decimal("0.015") / last + steps * Decimal("0.002")
