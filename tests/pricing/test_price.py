from __future__ import annotations

import dataclasses
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.pricing import Price, UnpricedModel
from tokenfuse.usage import Usage

SONNET = Price(
    model="claude-sonnet-4-5",
    input=Decimal("3"),
    output=Decimal("15"),
    cache_read=Decimal("0.30"),
    cache_write=Decimal("3.75"),
    cache_write_1h=Decimal("6"),
)
OPENAI_LIKE = Price(model="gpt-4o", input=Decimal("2.50"), output=Decimal("10"), cache_read=Decimal("1.25"))


def test_one_token_at_a_fractional_rate_is_exact() -> None:
    price = Price(model="m", input=Decimal("0.075"), output=Decimal("0.30"))
    cost = price.cost(Usage(input_uncached=1))
    assert cost == Decimal("0.000000075")
    assert isinstance(cost, Decimal)
    assert str(cost.normalize()) == "7.5E-8"


def test_each_token_class_is_billed_at_its_own_rate() -> None:
    usage = Usage(input_uncached=1000, cache_read=2000, cache_write=3000, cache_write_1h=4000, output=500)
    # 1000*3 + 2000*0.30 + 3000*3.75 + 4000*6 + 500*15 = 46350 per million
    assert SONNET.cost(usage) == Decimal("0.04635")


def test_unsupported_classes_are_billed_at_the_input_rate() -> None:
    usage = Usage(cache_write=10, cache_write_1h=10)
    assert OPENAI_LIKE.cost(usage) == Decimal("0.00005")  # 20 tokens * 2.50 / 1e6
    assert OPENAI_LIKE.cost(Usage(cache_read=4)) == Decimal("0.000005")  # its own cached rate


def test_zero_usage_costs_nothing() -> None:
    assert SONNET.cost(Usage()) == 0


def test_dearest_input_rate() -> None:
    assert SONNET.dearest_input_rate(cache_1h=False) == Decimal("3.75")
    assert SONNET.dearest_input_rate(cache_1h=True) == Decimal("6")
    assert OPENAI_LIKE.dearest_input_rate(cache_1h=True) == Decimal("2.50")


def test_supports_cache() -> None:
    assert SONNET.supports_cache
    assert OPENAI_LIKE.supports_cache
    assert not Price(model="e", input=Decimal("0.02"), output=Decimal("0")).supports_cache


def test_scaled_multiplies_every_rate_and_keeps_absent_classes_absent() -> None:
    up = OPENAI_LIKE.scaled(Decimal("1.10"))
    assert (up.input, up.output, up.cache_read) == (Decimal("2.75"), Decimal("11"), Decimal("1.375"))
    assert up.cache_write is None and up.cache_write_1h is None


def test_unpriced_model_message_names_the_model_and_the_fix() -> None:
    err = UnpricedModel("mystery-model", ("gpt-4o",))
    text = str(err)
    assert "mystery-model" in text and "gpt-4o" in text and "prices:" in text
    assert err.model == "mystery-model"


counts = st.integers(min_value=0, max_value=10**9)
usages = st.builds(Usage, counts, counts, counts, counts, counts)


@given(usages, usages)
def test_cost_is_additive_and_exact(a: Usage, b: Usage) -> None:
    assert SONNET.cost(a + b) == SONNET.cost(a) + SONNET.cost(b)
    # Exact: scaling back to per-million gives the integer-rate sum with no residue.
    per_million = SONNET.cost(a) * 10**6
    expected = (
        a.input_uncached * 3
        + a.cache_read * Decimal("0.30")
        + a.cache_write * Decimal("3.75")
        + a.cache_write_1h * 6
        + a.output * 15
    )
    assert per_million == expected


LONG = dataclasses.replace(
    SONNET,
    long_context_threshold=200_000,
    long_context=Price(
        model="claude-sonnet-4-5",
        input=Decimal("6"),
        output=Decimal("22.50"),
        cache_read=Decimal("0.60"),
        cache_write=Decimal("7.50"),
        cache_write_1h=Decimal("12"),
    ),
)


def test_long_context_tier_starts_above_the_threshold_counting_cache_tokens() -> None:
    at = Usage(input_uncached=100_000, cache_read=100_000, output=1_000)
    over = Usage(input_uncached=100_000, cache_read=100_000, cache_write=1, output=1_000)
    # 100000*3 + 100000*0.30 + 1000*15 = 345000 per million
    assert LONG.cost(at) == Decimal("0.345")
    # the whole request moves to the tier: 100000*6 + 100000*0.60 + 1*7.50 + 1000*22.50
    assert LONG.cost(over) == Decimal("0.6825075")


def test_dearest_input_rate_with_a_prompt_size() -> None:
    assert LONG.dearest_input_rate(cache_1h=True) == Decimal("6")
    assert LONG.dearest_input_rate(cache_1h=True, input_tokens=200_000) == Decimal("6")
    assert LONG.dearest_input_rate(cache_1h=True, input_tokens=200_001) == Decimal("12")
    assert LONG.dearest_input_rate(cache_1h=False, input_tokens=300_000) == Decimal("7.50")


def test_scaled_scales_the_long_context_tier_too() -> None:
    up = LONG.scaled(Decimal("1.10"))
    assert up.long_context is not None and up.long_context_threshold == 200_000
    assert (up.long_context.input, up.long_context.output) == (Decimal("6.6"), Decimal("24.75"))
