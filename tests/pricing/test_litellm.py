from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tokenfuse.pricing import PriceBook
from tokenfuse.pricing.litellm import load_litellm, parse_litellm

D = Decimal


def test_fields_map_to_our_classes_per_million_exactly(litellm_file: str) -> None:
    prices = load_litellm(litellm_file)
    sonnet = prices["claude-sonnet-4-5"]
    assert (sonnet.input, sonnet.output) == (D("2"), D("12"))
    assert (sonnet.cache_read, sonnet.cache_write, sonnet.cache_write_1h) == (D("0.2"), D("2.5"), D("4"))
    assert sonnet.long_context is not None and sonnet.long_context_threshold == 200_000
    lc = sonnet.long_context
    assert (lc.input, lc.output, lc.cache_read, lc.cache_write, lc.cache_write_1h) == (
        D("4"),
        D("18"),
        D("0.4"),
        D("5"),
        D("8"),
    )
    mini = prices["gpt-4o-mini"]
    assert (mini.input, mini.output, mini.cache_read) == (D("0.15"), D("0.6"), D("0.075"))
    assert mini.cache_write is None and mini.cache_write_1h is None
    assert mini.long_context is None
    for price in prices.values():
        for value in (price.input, price.output, price.cache_read, price.cache_write, price.cache_write_1h):
            assert value is None or isinstance(value, Decimal)


def test_rows_that_cannot_be_priced_per_token_are_skipped(litellm_file: str) -> None:
    prices = load_litellm(litellm_file)
    assert "sample_spec" not in prices
    assert "an-image-model" not in prices
    assert "broken-price" not in prices
    assert "no-output-chat" not in prices
    assert prices["some-embedding"].output == 0
    assert prices["some-embedding"].input == D("0.02")


def test_book_prices_models_only_the_file_knows(litellm_file: str) -> None:
    book = PriceBook.build(litellm_file=litellm_file)
    assert book.require("litellm-only-model").output == D("3")
    res = book.resolve("litellm-only-model")
    assert res is not None and res.layer == "litellm"
    # The bundled catalog still prices what the file lacks.
    assert book.require("moonshotai.kimi-k2.5").input == D("0.60")


def test_file_rows_for_regional_profiles_are_not_marked_up_twice(litellm_file: str) -> None:
    book = PriceBook.build(litellm_file=litellm_file)
    assert book.require("us.anthropic.claude-opus-4-6-v1").input == D("5.5")
    # A profile the file lacks still gets the catalog price plus the premium once.
    assert book.require("eu.anthropic.claude-opus-4-6-v1").input == D("5.50")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="no such file") as info:
        PriceBook.build(litellm_file=str(missing))
    assert str(missing) in str(info.value)


def test_invalid_json_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_litellm(str(bad))


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_litellm(str(bad))


def test_negative_or_boolean_numbers_are_rejected_rows() -> None:
    doc = {
        "neg": {"input_cost_per_token": D("-1e-06"), "output_cost_per_token": D("1e-06")},
        "flag": {"input_cost_per_token": True, "output_cost_per_token": D("1e-06")},
        "bad-cache": {
            "input_cost_per_token": D("1e-06"),
            "output_cost_per_token": D("1e-06"),
            "cache_read_input_token_cost": "cheap",
        },
        "ok": {"input_cost_per_token": D("1e-06"), "output_cost_per_token": D("2e-06")},
    }
    assert set(parse_litellm(doc)) == {"ok"}
