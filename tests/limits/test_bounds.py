"""The bound must be at least what any usage the request can produce costs."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.limits.bounds import compute_bound
from tokenfuse.pricing.price import Price
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

PRICE = Price(
    "test-model",
    input=Decimal("3"),
    output=Decimal("15"),
    cache_read=Decimal("0.30"),
    cache_write=Decimal("3.75"),
    cache_write_1h=Decimal("6"),
)


def info(
    prompt_bytes: int, max_tokens: int | None, writes: bool = True, one_hour: bool = False
) -> RequestInfo:
    return RequestInfo(
        "anthropic", "messages", "test-model", False, max_tokens, prompt_bytes, writes, one_hour, {}
    )


def test_prices_input_at_the_5_minute_cache_write_rate() -> None:
    b = compute_bound(info(1_000_000, 1_000_000), PRICE)
    assert b.usd == Decimal("3.75") + Decimal("15")
    assert b.tokens == {
        "input_uncached": 1_000_000,
        "cache_read": 1_000_000,
        "cache_write": 1_000_000,
        "output": 1_000_000,
        "total": 2_000_000,
    }


def test_one_hour_cache_requests_take_the_1h_write_rate() -> None:
    assert compute_bound(info(1_000_000, 0, one_hour=True), PRICE).usd == Decimal("6")


def test_without_cache_writes_input_is_priced_as_input_and_no_write_tokens_are_bounded() -> None:
    b = compute_bound(info(2_000_000, 10, writes=False), PRICE)
    assert b.usd == Decimal("6") + Decimal("0.00015")
    assert b.tokens["cache_write"] == 0


def test_no_max_tokens_means_no_output_bound() -> None:
    b = compute_bound(info(500, None, writes=False), PRICE)
    assert b.tokens["output"] == 0
    assert b.usd == Decimal("0.0015")


def test_unpriced_cache_classes_fall_back_to_input_rate() -> None:
    plain = Price("m", input=Decimal("2"), output=Decimal("8"))
    assert compute_bound(info(1_000_000, 0), plain).usd == Decimal("2")


@given(
    prompt=st.integers(0, 200_000),
    max_out=st.integers(0, 64_000),
    one_hour=st.booleans(),
    split=st.lists(st.integers(0, 10**6), min_size=4, max_size=4),
    out_frac=st.floats(0, 1),
)
def test_any_usage_the_request_can_produce_costs_at_most_the_bound(
    prompt: int, max_out: int, one_hour: bool, split: list[int], out_frac: float
) -> None:
    # Spread at most `prompt` input tokens over the four input classes.
    total = sum(split) or 1
    parts = [prompt * s // total for s in split]
    usage = Usage(
        input_uncached=parts[0],
        cache_read=parts[1],
        cache_write=parts[2],
        cache_write_1h=parts[3] if one_hour else 0,
        output=int(max_out * out_frac),
    )
    b = compute_bound(info(prompt, max_out, one_hour=one_hour), PRICE)
    assert PRICE.cost(usage) <= b.usd
    assert usage.input_uncached <= b.tokens["input_uncached"]
    assert usage.cache_write_all <= b.tokens["cache_write"]
    assert usage.total <= b.tokens["total"]


def test_output_is_bounded_per_choice_and_input_once() -> None:
    one = info(1000, 100, writes=False)
    eight = info(1000, 100, writes=False)
    eight.choices = 8
    b1, b8 = compute_bound(one, PRICE), compute_bound(eight, PRICE)
    assert b8.tokens["output"] == 800 and b8.tokens["input_uncached"] == 1000
    assert b8.usd - b1.usd == 700 * PRICE.output / 1_000_000


@given(
    choices=st.integers(1, 128),
    max_out=st.integers(1, 64_000),
    out_fracs=st.lists(st.floats(0, 1), min_size=128),
)
def test_any_output_of_every_choice_costs_at_most_the_bound(
    choices: int, max_out: int, out_fracs: list[float]
) -> None:
    # A provider honouring `n` bills the sum of every choice's output, each up to max_tokens.
    i = info(500, max_out, writes=False)
    i.choices = choices
    out = sum(int(max_out * f) for f in out_fracs[:choices])
    b = compute_bound(i, PRICE)
    assert PRICE.cost(Usage(input_uncached=500, output=out)) <= b.usd
    assert out <= b.tokens["output"]
