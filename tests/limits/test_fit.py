"""Fit to budget: the limiter lowers an output limit to what the headroom holds, never below the floor."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.limits.conftest import by_name, ctx, make_config
from tokenfuse.limits.bounds import compute_bound
from tokenfuse.limits.fit import Fit, plan
from tokenfuse.limits.limiter import Limiter, bound_vector
from tokenfuse.pricing.price import Price
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

OPUS = Price(
    "test-model",
    input=Decimal("5"),
    output=Decimal("25"),
    cache_read=Decimal("0.50"),
    cache_write=Decimal("6.25"),
    cache_write_1h=Decimal("10"),
)


def request(prompt_bytes: int = 20_000, max_tokens: int = 32_000, choices: int = 1) -> RequestInfo:
    body = {"model": "test-model", "max_tokens": max_tokens, "messages": []}
    return RequestInfo(
        "anthropic", "messages", "test-model", True, max_tokens, prompt_bytes, True, False, body, choices=choices
    )


def fit_of(info: RequestInfo, floor: int = 1024, lower: bool = True) -> Fit:
    p = plan(info, OPUS, prefixes=None, scope="alice", floor=floor, lower=lower)
    assert p.fit is not None
    return p.fit


def budget(usd: str) -> list[dict[str, object]]:
    return [{"name": "day", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": usd}}]


@given(st.integers(0, 2_000_000), st.integers(1, 64_000), st.integers(1, 4))
def test_largest_is_the_largest_limit_whose_bound_fits(room: int, requested: int, choices: int) -> None:
    f = fit_of(request(max_tokens=requested, choices=choices, prompt_bytes=1000))
    within = lambda b: bound_vector(b)[0] <= room * 1000  # noqa: E731 - room in nano-dollars
    n = f.largest(within, requested)
    if n < 0:
        assert not within(f.bound(0))
        return
    assert within(f.bound(n))
    assert n == requested or not within(f.bound(n + 1))


def test_a_lowered_bound_is_the_true_bound_of_the_request_as_forwarded() -> None:
    info = request()
    f = fit_of(info)
    lowered = f.bound(5000)
    assert lowered.max_tokens == 5000 and lowered.lowered_from == 32_000
    info.max_tokens = 5000
    assert lowered.usd == compute_bound(info, OPUS).usd
    assert f.bound(32_000).lowered_from is None


async def test_lowers_max_tokens_to_what_fits_and_reserves_that(tmp_path: Path) -> None:
    lim = await Limiter.create(make_config(budget("0.50"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    info = request()  # input bound 20,000 x $6.25/M = $0.125; output $0.80
    p = plan(info, OPUS, prefixes=None, scope="alice", floor=1024, lower=True)
    adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
    assert adm.ok and adm.bound is not None
    assert adm.bound.lowered_from == 32_000
    # $0.50 - $0.125 = $0.375 of output at $25/M is 15,000 tokens.
    assert adm.bound.max_tokens == 15_000
    status = by_name(await lim.snapshot())["day"]
    assert status.reserved_usd == Decimal("0.5")
    await lim.settle(adm, Usage(input_uncached=5000, output=100), Decimal("0.03"))
    await lim.close()


async def test_a_request_that_fits_is_not_lowered(tmp_path: Path) -> None:
    lim = await Limiter.create(make_config(budget("5"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    p = plan(request(), OPUS, prefixes=None, scope="alice", floor=1024, lower=True)
    adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
    assert adm.ok and adm.bound is p.bound and adm.bound.lowered_from is None
    await lim.close()


async def test_below_the_floor_it_refuses_and_says_what_would_fit(tmp_path: Path) -> None:
    # $0.14 - $0.125 input = $0.015 of output: 600 tokens, under the 1024 floor.
    lim = await Limiter.create(make_config(budget("0.14"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    p = plan(request(), OPUS, prefixes=None, scope="alice", floor=1024, lower=True)
    adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
    assert not adm.ok and adm.refusal is not None
    assert adm.refusal.fits == 600
    assert "max_tokens: 600 would fit (below the gateway's floor of 1024" in adm.refusal.message
    assert "this request could use up to $0.925" in adm.refusal.message
    await lim.close()


async def test_when_not_even_the_input_fits_it_says_nothing_fits_until_the_reset(tmp_path: Path) -> None:
    lim = await Limiter.create(make_config(budget("0.10"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    p = plan(request(), OPUS, prefixes=None, scope="alice", floor=1024, lower=True)
    adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
    assert not adm.ok and adm.refusal is not None and adm.refusal.resets_at is not None
    assert adm.refusal.fits == 0
    reset = adm.refusal.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"Nothing fits until {reset}" in adm.refusal.message
    await lim.close()


async def test_a_policy_that_forbids_lowering_refuses_and_names_the_limit(tmp_path: Path) -> None:
    lim = await Limiter.create(make_config(budget("0.50"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    p = plan(request(), OPUS, prefixes=None, scope="alice", floor=1024, lower=False)
    adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
    assert not adm.ok and adm.refusal is not None
    assert "max_tokens: 15000 would fit (this key does not let the gateway lower" in adm.refusal.message
    await lim.close()


async def test_concurrent_fitted_requests_never_hold_more_than_the_cap(tmp_path: Path) -> None:
    lim = await Limiter.create(make_config(budget("3"), store=f"sqlite:///{tmp_path / 'l.db'}"))
    rng = random.Random(5)
    spent = Decimal(0)
    lowered = 0

    async def agent() -> None:
        nonlocal spent, lowered
        for _ in range(20):
            p = plan(request(rng.randint(1000, 40_000)), OPUS, prefixes=None, scope="a", floor=1024, lower=True)
            adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
            status = by_name(await lim.snapshot())["day"]
            assert status.spent_usd + status.reserved_usd <= Decimal(3)
            if not adm.ok:
                continue
            assert adm.bound is not None
            lowered += adm.bound.lowered_from is not None
            await asyncio.sleep(rng.random() / 200)
            cost = adm.bound.usd * Decimal(rng.randint(20, 100)) / 100
            spent += cost
            await lim.settle(adm, Usage(output=1), cost)

    await asyncio.gather(*(agent() for _ in range(8)))
    assert spent <= Decimal(3)
    assert lowered > 0
    await lim.close()


async def test_two_redis_replicas_fitting_requests_never_exceed_a_shared_cap(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    cfg = make_config(budget("2"), counters=redis_url, store=f"sqlite:///{tmp_path / 'l.db'}")
    a = await Limiter.create(cfg, prefix=redis_prefix)
    b = await Limiter.create(cfg, prefix=redis_prefix)
    # Which request reaches Redis first decides whether the second is lowered or fits whole;
    # with this seed it is lowered whatever the arrival order (replicas pipeline their calls).
    rng = random.Random(1)
    billed = Decimal(0)
    lowered = 0

    async def agent(lim: Limiter) -> None:
        nonlocal billed, lowered
        for _ in range(15):
            p = plan(request(rng.randint(1000, 40_000)), OPUS, prefixes=None, scope="a", floor=1024, lower=True)
            adm = await lim.reserve(ctx(), p.bound, fit=p.fit)
            if not adm.ok:
                continue
            assert adm.bound is not None
            lowered += adm.bound.lowered_from is not None
            await asyncio.sleep(rng.random() / 200)
            # The worst case: every admitted request bills its whole (lowered) bound.
            billed += adm.bound.usd
            await lim.settle(adm, Usage(output=1), adm.bound.usd)

    await asyncio.gather(*(agent(a if i % 2 else b) for i in range(8)))
    assert billed <= Decimal(2)
    assert lowered > 0
    assert by_name(await a.snapshot())["day"].spent_usd == billed
    await a.close()
    await b.close()
