"""Counters rebuilt from the ledger on start: a restart never resets a budget."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.limits.conftest import bound, ctx, insert_rows, make_config
from tokenfuse.config import BudgetConfig, SessionCaps
from tokenfuse.limits.budgets import Budget, calendar_window
from tokenfuse.limits.limiter import Limiter
from tokenfuse.limits.rebuild import ledger_seeds

NOW = time.time()
MONTH_START, _ = calendar_window("month", NOW)
HOUR_START, _ = calendar_window("hour", NOW)


@pytest.fixture
def store(store_url: str) -> str:
    return store_url


def row(ts: float, **kw: Any) -> dict[str, Any]:
    return {"ts": ts, "key_name": "alice-droid", "principal": "alice", "workflow": "droid", **kw}


LEDGER = [
    # this month, billed
    row(MONTH_START + 1, cost_usd="0.100000000001", input_uncached=1000, output=100),
    row(
        NOW - 10,
        cost_usd="0.25",
        input_uncached=2000,
        cache_read=500,
        cache_write=10,
        cache_write_1h=5,
        output=50,
    ),
    row(NOW - 5, cost_usd="0.05", model="claude-opus-4-1", output=20),
    # last month: outside the monthly window, inside `total`
    row(MONTH_START - 1, cost_usd="5"),
    # never billed: refused, and an upstream error that used nothing
    row(NOW - 3, outcome="refused", cost_usd="0"),
    row(NOW - 3, outcome="upstream_error", cost_usd="0"),
    # billed although the client went away
    row(NOW - 2, outcome="client_abort", cost_usd="0.01", output=7),
    # someone else's
    row(NOW - 1, principal="bob", key_name="bob-batch", workflow="batch", cost_usd="1"),
]

BUDGETS = [
    {"name": "alice-month", "match": {"principal": "alice"}, "window": "month", "limit": {"usd": 10}},
    {"name": "opus-day", "match": {"model": "*opus*"}, "window": "day", "limit": {"requests": 10}},
    {"name": "everything", "window": "total", "limit": {"usd": 100}},
    {
        "name": "droid-hour",
        "match": {"workflow": "droid"},
        "window": "hour",
        "limit": {"tokens": {"input_uncached": 10**6, "cache_write": 10**6}},
    },
]


async def test_rebuild_restores_open_windows(store: str) -> None:
    insert_rows(store, LEDGER)
    # The same clock as the windows above: an hour may turn between import and this test.
    lim = await Limiter.create(make_config(BUDGETS, store=store), now=NOW)
    s = {x.name: x for x in await lim.snapshot(now=NOW)}
    # 0.100000000001 is rounded up to the next nano-dollar, as settle does.
    assert s["alice-month"].spent_usd == Decimal("0.100000001") + Decimal("0.25") + Decimal("0.05") + Decimal(
        "0.01"
    )
    assert s["alice-month"].spent_requests == 4
    assert s["opus-day"].spent_requests == (1 if NOW - 5 >= calendar_window("day", NOW)[0] else 0)
    assert s["everything"].spent_usd == Decimal("6.410000001")
    assert s["everything"].spent_requests == 6
    hour_rows = [
        r for r in LEDGER if r["ts"] >= HOUR_START and r.get("outcome", "ok") in ("ok", "client_abort")
    ]
    assert s["droid-hour"].spent_tokens["input_uncached"] == sum(
        r.get("input_uncached", 0) for r in hour_rows
    )
    assert s["droid-hour"].spent_tokens["cache_write"] == sum(
        r.get("cache_write", 0) + r.get("cache_write_1h", 0) for r in hour_rows if r["workflow"] == "droid"
    )
    await lim.close()


async def test_a_restarted_limiter_enforces_what_was_spent(store: str) -> None:
    insert_rows(store, [row(NOW - 60, cost_usd="0.95", output=10)])
    cfg = make_config([{**BUDGETS[0], "limit": {"usd": 1}}], store=store)
    lim = await Limiter.create(cfg)
    refused = await lim.reserve(ctx(), bound("0.06"))
    assert refused.refusal is not None and refused.refusal.spent == "$0.95"
    assert (await lim.reserve(ctx(), bound("0.05"))).ok
    await lim.close()


async def test_rolling_windows_rebuild_into_buckets(store: str) -> None:
    insert_rows(store, [row(NOW - 1800, output=1), row(NOW - 3 * 3600, output=1), row(NOW - 60, output=1)])
    cfg = make_config([{"name": "r", "window": {"rolling": "1h"}, "limit": {"requests": 3}}], store=store)
    lim = await Limiter.create(cfg, now=NOW)
    assert {x.name: x for x in await lim.snapshot(now=NOW)}["r"].spent_requests == 2
    # The request from 30 minutes ago leaves the window half an hour (and a bucket) later.
    later = NOW + 1800 + 61
    assert {x.name: x for x in await lim.snapshot(now=later)}["r"].spent_requests == 1
    await lim.close()


async def test_sessions_are_rebuilt_while_not_idle(store: str) -> None:
    insert_rows(
        store,
        [row(NOW - 30, session="agent-1", output=1) for _ in range(2)]
        + [row(NOW - 7200, session="agent-old", output=1) for _ in range(2)],
    )
    cfg = make_config([], store=store, sessions={"max_requests": 3, "idle_expiry": "1h"})
    lim = await Limiter.create(cfg)
    caps = SessionCaps(max_requests=3, idle_expiry="1h")
    assert (await lim.reserve(ctx(session="agent-1"), bound(), session_caps=caps)).ok
    r = (await lim.reserve(ctx(session="agent-1"), bound(), session_caps=caps)).refusal
    assert r is not None and r.kind == "session_cap"
    for _ in range(3):
        assert (await lim.reserve(ctx(session="agent-old"), bound(), session_caps=caps)).ok
    await lim.close()


def test_groups_are_matched_in_python_with_globs(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'l.db'}"
    t = datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp()
    insert_rows(
        store,
        [
            row(t - 10, model="gpt-4o-mini", cost_usd="0.1"),
            row(t - 10, model="gpt-4o", cost_usd="0.2"),
            row(t - 10, model="gpt-4", cost_usd="0.4"),
        ],
    )
    b = Budget(
        BudgetConfig.model_validate(
            {"name": "g", "match": {"model": "gpt-4o*"}, "window": "day", "limit": {"usd": 1}}
        )
    )
    seeds = ledger_seeds(store, [b], t, None)
    assert len(seeds) == 1 and seeds[0].buckets[0][:2] == (300_000_000, 2)


async def test_a_new_runtime_budget_is_rebuilt_before_it_is_enforced(store: str) -> None:
    insert_rows(store, [row(NOW - 60, cost_usd="0.80", output=10)])
    lim = await Limiter.create(make_config([], store=store))
    lim.set_runtime_budgets(
        [BudgetConfig.model_validate({"name": "rt", "match": {"principal": "alice"}, "limit": {"usd": 1}})]
    )
    refused = await lim.reserve(ctx(), bound("0.30"))
    assert refused.refusal is not None and refused.refusal.spent == "$0.8"
    assert (await lim.reserve(ctx(), bound("0.20"))).ok
    await lim.close()


async def test_team_tag_and_list_budgets_rebuild_from_the_ledger(store: str) -> None:
    from tokenfuse.limits.context import RequestContext

    insert_rows(store, [
        row(NOW - 60, cost_usd="0.40", team="platform", tags="nightly"),
        row(NOW - 50, cost_usd="0.30", principal="bob", key_name="bob-k", team="platform"),
        row(NOW - 40, cost_usd="0.20", principal="carol", key_name="carol-k", team="research", tags="adhoc,nightly"),
    ])
    budgets = [
        {"name": "platform", "match": {"team": "platform"}, "window": "day", "limit": {"usd": 1}},
        {"name": "nightly", "match": {"tags": ["nightly", "weekly"]}, "window": "day", "limit": {"usd": 1}},
        {"name": "pair", "match": {"principal": ["alice", "carol"]}, "window": "day", "limit": {"usd": 1}},
    ]
    lim = await Limiter.create(make_config(budgets, store=store))
    s = {x.name: x.spent_usd for x in await lim.snapshot(now=NOW)}
    assert s == {"platform": Decimal("0.70"), "nightly": Decimal("0.60"), "pair": Decimal("0.60")}
    bob = RequestContext("bob-k", "bob", "droid", None, "test-model", "anthropic", "platform", ())
    refused = await lim.reserve(bob, bound("0.31"))
    assert refused.refusal is not None and refused.refusal.budget == "platform"
    await lim.close()
