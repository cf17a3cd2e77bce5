"""The limiter over in-process counters: admission, refusal, settlement, sessions."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.limits.conftest import bound, by_name, ctx, make_config
from tokenfuse.config import BudgetConfig, SessionCaps
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.limits.limiter import Limiter
from tokenfuse.usage import Usage


async def limiter(tmp_path: Path, budgets: list[dict[str, Any]], **kw: Any) -> Limiter:
    cfg = make_config(budgets, store=f"sqlite:///{tmp_path / 'ledger.db'}", **kw)
    return await Limiter.create(cfg, on_settle=kw.pop("on_settle", None))


MONTHLY = {
    "name": "alice-monthly",
    "match": {"principal": "alice"},
    "window": "month",
    "limit": {"usd": "1.00"},
}


async def test_a_request_matching_nothing_is_admitted_without_holding_anything(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY])
    a = await lim.reserve(ctx(principal="bob"), bound("5"))
    assert a.ok and a.held is None
    await lim.settle(a, Usage(output=10), Decimal("0.1"))
    assert by_name(await lim.snapshot())["alice-monthly"].spent_usd == 0


async def test_refuses_a_bound_larger_than_the_headroom_instead_of_shrinking_it(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY])
    first = await lim.reserve(ctx(), bound("0.70"))
    assert first.ok
    await lim.settle(first, Usage(input_uncached=10, output=10), Decimal("0.55"))
    held = await lim.reserve(ctx(), bound("0.20"))
    assert held.ok
    refused = await lim.reserve(ctx(), bound("0.30"))  # 0.55 + 0.20 + 0.30 > 1.00, though 0.25 is left
    assert not refused.ok and refused.refusal is not None
    r = refused.refusal
    assert (r.kind, r.budget, r.limit, r.spent, r.reserved, r.requested) == (
        "budget",
        "alice-monthly",
        "$1",
        "$0.55",
        "$0.2",
        "$0.3",
    )
    assert r.resets_at is not None and r.resets_at.day == 1
    for part in ("alice-monthly", "$1", "$0.55", "$0.2", "$0.3", r.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")):
        assert part in r.message
    # A bound that fits is still admitted.
    assert (await lim.reserve(ctx(), bound("0.25"))).ok


async def test_all_matching_budgets_or_none(tmp_path: Path) -> None:
    lim = await limiter(
        tmp_path,
        [
            {"name": "roomy", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": 100}},
            {"name": "calls", "match": {"model": "test-*"}, "window": "day", "limit": {"requests": 2}},
        ],
    )
    assert (await lim.reserve(ctx(), bound("1"))).ok
    assert (await lim.reserve(ctx(), bound("1"))).ok
    refused = await lim.reserve(ctx(), bound("1"))
    assert refused.refusal is not None and refused.refusal.budget == "calls"
    snap = by_name(await lim.snapshot())
    # The refused request left nothing held on the budget that had room.
    assert snap["roomy"].reserved_usd == 2 and snap["roomy"].reserved_requests == 2
    assert snap["calls"].reserved_requests == 2


async def test_settle_arithmetic(tmp_path: Path) -> None:
    lim = await limiter(
        tmp_path,
        [{"name": "all", "window": "total", "limit": {"usd": 100, "tokens": {"cache_write": 10**9}}}],
    )
    a = await lim.reserve(ctx(), bound("2", input_tokens=5000, output=1000))
    assert by_name(await lim.snapshot())["all"].reserved_tokens["total"] == 6000
    usage = Usage(input_uncached=100, cache_read=200, cache_write=300, cache_write_1h=400, output=50)
    await lim.settle(a, usage, Decimal("0.0000000011"))  # 1.1 nano-dollars: counted as 2
    await lim.settle(a, usage, Decimal("1"))  # a second settle is ignored
    s = by_name(await lim.snapshot())["all"]
    assert s.spent_usd == Decimal("0.000000002")
    assert s.spent_requests == 1
    assert s.spent_tokens == {
        "input_uncached": 100,
        "cache_read": 200,
        "cache_write": 700,
        "output": 50,
        "total": 1050,
    }
    assert s.reserved_usd == 0 and s.reserved_requests == 0 and s.reserved_tokens["total"] == 0


async def test_release_returns_the_headroom_and_counts_nothing(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY])
    a = await lim.reserve(ctx(), bound("0.9"))
    assert not (await lim.reserve(ctx(), bound("0.2"))).ok
    await lim.release(a)
    s = by_name(await lim.snapshot())["alice-monthly"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal(0), Decimal(0))
    assert (s.spent_requests, s.reserved_requests) == (0, 0)
    assert (await lim.reserve(ctx(), bound("0.2"))).ok


async def test_calls_per_day_and_uncached_tokens_per_hour(tmp_path: Path) -> None:
    lim = await limiter(
        tmp_path,
        [
            {"name": "opus-calls", "match": {"model": "*opus*"}, "window": "day", "limit": {"requests": 3}},
            {
                "name": "droid-uncached",
                "match": {"workflow": "droid"},
                "window": "hour",
                "limit": {"tokens": {"input_uncached": 1000}},
            },
        ],
    )
    opus = ctx(model="claude-opus-4", workflow="batch")
    for _ in range(3):
        a = await lim.reserve(opus, bound("0.01"))
        await lim.settle(a, Usage(output=1), Decimal("0.001"))
    assert (await lim.reserve(opus, bound("0.01"))).refusal is not None
    assert (await lim.reserve(ctx(model="claude-sonnet-4", workflow="batch"), bound("0.01"))).ok
    droid = ctx(model="claude-sonnet-4")
    a = await lim.reserve(droid, bound("0.01", input_tokens=600))
    await lim.settle(a, Usage(input_uncached=550, cache_read=50), Decimal("0.001"))
    r = (await lim.reserve(droid, bound("0.01", input_tokens=600))).refusal
    assert r is not None and r.budget == "droid-uncached" and r.limit == "1000 input_uncached tokens"
    assert (await lim.reserve(droid, bound("0.01", input_tokens=450))).ok


async def test_one_thousand_concurrent_requests_never_exceed_the_cap(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [{"name": "cap", "window": "day", "limit": {"usd": "1.00"}}])
    rng = random.Random(7)
    admitted = 0

    async def one() -> None:
        nonlocal admitted
        a = await lim.reserve(ctx(), bound("0.004"))
        await asyncio.sleep(rng.random() / 1000)
        if not a.ok:
            return
        admitted += 1
        if rng.random() < 0.1:
            await lim.release(a)
        else:
            await lim.settle(a, Usage(output=1), Decimal("0.004") * Decimal(rng.randint(1, 100)) / 100)

    await asyncio.gather(*(one() for _ in range(1000)))
    s = by_name(await lim.snapshot())["cap"]
    assert s.spent_usd <= Decimal("1.00")
    assert s.reserved_usd == 0
    assert 250 <= admitted < 1000


async def test_session_caps_tell_the_agent_to_stop(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [])
    caps = SessionCaps(max_requests=2, idle_expiry="10m")
    t = 1_900_000_000.0
    for i in range(2):
        a = await lim.reserve(ctx(session="run-1"), bound("0.01"), session_caps=caps, now=t + i)
        assert a.ok
        await lim.settle(a, Usage(output=5), Decimal("0.01"), now=t + i)
    r = (await lim.reserve(ctx(session="run-1"), bound("0.01"), session_caps=caps, now=t + 2)).refusal
    assert r is not None and r.kind == "session_cap" and r.budget == "session:run-1"
    assert "summarize your progress" in r.message and "2 requests" in r.message
    # Other sessions are unaffected; an idle session starts over.
    assert (await lim.reserve(ctx(session="run-2"), bound("0.01"), session_caps=caps, now=t + 2)).ok
    assert (await lim.reserve(ctx(session="run-1"), bound("0.01"), session_caps=caps, now=t + 700)).ok


async def test_session_usd_cap_and_snapshot(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [])
    caps = SessionCaps(max_requests=None, max_usd=Decimal("0.05"))
    a = await lim.reserve(ctx(session="s1"), bound("0.03"), session_caps=caps)
    await lim.settle(a, Usage(output=5), Decimal("0.03"))
    assert (await lim.reserve(ctx(session="s1"), bound("0.03"), session_caps=caps)).refusal is not None
    b = await lim.reserve(ctx(session="s2"), bound("0.01"), session_caps=caps)
    assert b.ok
    rows = await lim.session_snapshot()
    assert [r["session"] for r in rows] == ["s1", "s2"]
    assert rows[0]["spent_usd"] == "0.03" and rows[0]["max_usd"] == "0.05"
    assert rows[0]["percent"] == pytest.approx(60.0)


async def test_on_settle_sees_the_budgets_after_the_update(tmp_path: Path) -> None:
    seen: list[list[BudgetStatus]] = []
    cfg = make_config([MONTHLY], store=f"sqlite:///{tmp_path / 'l.db'}")
    lim = await Limiter.create(cfg, on_settle=seen.append)
    a = await lim.reserve(ctx(), bound("0.5"))
    await lim.settle(a, Usage(output=3), Decimal("0.25"))
    assert len(seen) == 1 and seen[0][0].name == "alice-monthly"
    assert seen[0][0].spent_usd == Decimal("0.25") and seen[0][0].percent == pytest.approx(25.0)


async def test_runtime_budgets_join_the_config_ones(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY])
    lim.set_runtime_budgets(
        [
            BudgetConfig.model_validate(
                {"name": "rt", "match": {"workflow": "droid"}, "window": "day", "limit": {"requests": 1}}
            )
        ]
    )
    a = await lim.reserve(ctx(), bound("0.1"))
    assert a.ok
    r = (await lim.reserve(ctx(), bound("0.1"))).refusal
    assert r is not None and r.budget == "rt"
    assert {(s.name, s.source) for s in await lim.snapshot()} == {
        ("alice-monthly", "config"),
        ("rt", "runtime"),
    }
    lim.set_runtime_budgets([])
    assert (await lim.reserve(ctx(), bound("0.1"))).ok


async def test_rolling_budget_frees_headroom_as_usage_ages(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [{"name": "r", "window": {"rolling": "1h"}, "limit": {"requests": 1}}])
    t = 1_900_000_000.0
    a = await lim.reserve(ctx(), bound("0.1"), now=t)
    await lim.settle(a, Usage(output=1), Decimal("0.01"), now=t)
    r = (await lim.reserve(ctx(), bound("0.1"), now=t + 3000)).refusal
    assert r is not None and r.resets_at is None and "rolling 1h" in r.message
    assert (await lim.reserve(ctx(), bound("0.1"), now=t + 3600 + 61)).ok


async def test_a_new_window_starts_empty(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [{"name": "m", "window": "minute", "limit": {"requests": 1}}])
    t = 60 * 31_666_667 + 20.0  # 20 s into a minute
    assert (await lim.reserve(ctx(), bound(), now=t)).ok
    assert not (await lim.reserve(ctx(), bound(), now=t + 39)).ok
    assert (await lim.reserve(ctx(), bound(), now=t + 40)).ok


async def test_waits_for_inflight_reservations_instead_of_refusing(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY], admission_wait_ms=5000)
    held = await lim.reserve(ctx(), bound("0.80"))
    assert held.ok
    # 0.80 held + 0.30 > 1.00, but 0 spent + 0.30 fits: the request waits for the
    # held bound to settle (at its real, smaller cost) instead of being refused.
    waiting = asyncio.ensure_future(lim.reserve(ctx(), bound("0.30")))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await lim.settle(held, Usage(output=10), Decimal("0.10"))
    admitted = await asyncio.wait_for(waiting, 5)
    assert admitted.ok
    # An exhausted budget refuses at once, however long the wait allowance.
    await lim.settle(admitted, Usage(output=10), Decimal("0.85"))
    refused = await asyncio.wait_for(lim.reserve(ctx(), bound("0.30")), 0.5)
    assert not refused.ok


async def test_the_wait_is_bounded(tmp_path: Path) -> None:
    lim = await limiter(tmp_path, [MONTHLY], admission_wait_ms=50)
    held = await lim.reserve(ctx(), bound("0.80"))
    assert held.ok
    refused = await asyncio.wait_for(lim.reserve(ctx(), bound("0.30")), 2)
    assert not refused.ok and refused.refusal is not None and refused.refusal.reserved == "$0.8"
