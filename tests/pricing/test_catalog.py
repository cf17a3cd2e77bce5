from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.pricing import PriceBook, UnpricedModel
from tokenfuse.pricing.catalog import parse_catalog

D = Decimal


def catalog_doc() -> dict[str, dict[str, dict[str, object]]]:
    text = resources.files("tokenfuse.pricing").joinpath("data", "catalog.json").read_text(encoding="utf-8")
    doc: dict[str, dict[str, dict[str, object]]] = json.loads(text)
    return doc


@pytest.fixture
def book() -> PriceBook:
    return PriceBook.default()


# requested id -> (catalog id it is priced as, input rate per million)
RESOLUTIONS = [
    ("claude-sonnet-4-5", "claude-sonnet-4-5", "3"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "3"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5", "1"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku", "0.80"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4-0", "3"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1", "15"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", "3"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", "3"),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", "3.30"),
    ("eu.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5", "1.10"),
    ("jp.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", "3.30"),
    ("au.anthropic.claude-opus-4-6-v1", "claude-opus-4-6", "5.50"),
    ("apac.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4-0", "3"),  # pre-4.5: no premium
    ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "claude-3-7-sonnet", "3"),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1", "15"),
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet", "3"),
    (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1",
        "claude-opus-4-6",
        "5.50",
    ),
    (
        "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
        "claude-3-haiku",
        "0.25",
    ),
    ("gpt-4o-2024-08-06", "gpt-4o", "2.50"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "5"),  # the older, dearer snapshot has its own price
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "0.15"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini", "0.25"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", "0.10"),
    ("o4-mini-2025-04-16", "o4-mini", "1.10"),
    ("moonshotai.kimi-k2.5", "moonshotai.kimi-k2.5", "0.60"),
    ("us.meta.llama4-scout-17b-instruct-v1:0", "meta.llama4-scout-17b-instruct-v1:0", "0.17"),
    ("us.amazon.nova-premier-v1:0", "amazon.nova-premier-v1:0", "2.50"),
    ("us.amazon.nova-2-lite-v1:0", "amazon.nova-2-lite-v1:0", "0.33"),  # Nova 2 Lite has the premium too
    ("global.amazon.nova-2-lite-v1:0", "amazon.nova-2-lite-v1:0", "0.30"),
    ("openai.gpt-oss-120b", "openai.gpt-oss-120b-1:0", "0.15"),
    ("us.deepseek.r1-v1:0", "deepseek.r1-v1:0", "1.35"),
]


@pytest.mark.parametrize(("requested", "matched", "input_rate"), RESOLUTIONS)
def test_resolution(book: PriceBook, requested: str, matched: str, input_rate: str) -> None:
    res = book.resolve(requested)
    assert res is not None, requested
    assert res.matched == matched
    assert res.price.input == D(input_rate)
    assert res.price.model == matched


def test_regional_premium_applies_to_every_rate(book: PriceBook) -> None:
    regional = book.require("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    base = book.require("global.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert (regional.input, regional.output) == (D("3.30"), D("16.50"))
    assert (regional.cache_read, regional.cache_write, regional.cache_write_1h) == (
        D("0.33"),
        D("4.125"),
        D("6.6"),
    )
    assert (base.input, base.output, base.cache_write_1h) == (D("3"), D("15"), D("6"))
    res = book.resolve("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert res is not None and res.premium == D("0.10") and res.geo == "us"


def test_kimi_k2_5_price_from_the_issue(book: PriceBook) -> None:
    price = book.require("moonshotai.kimi-k2.5")
    assert (price.input, price.output) == (D("0.60"), D("3"))


UNPRICED = [
    "gpt-4o-audio-preview",
    "gpt-4o-audio-preview-2024-12-17",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-tts",
    "ft:gpt-4o-mini-2024-07-18:acme::abc123",
    "claude-opus-4-1-extra",
    "anthropic.claude-instant-v1",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4",
    "test-model",
    "",
]


@pytest.mark.parametrize("model", UNPRICED)
def test_unknown_models_are_unpriced_not_guessed(book: PriceBook, model: str) -> None:
    assert book.lookup(model) is None
    with pytest.raises(UnpricedModel):
        book.require(model)


def test_every_catalog_id_and_alias_resolves_to_itself(book: PriceBook) -> None:
    for name, spec in catalog_doc()["models"].items():
        res = book.resolve(name)
        assert res is not None and res.matched == name and res.steps == ()
        for alias in spec.get("aliases", []):  # type: ignore[attr-defined]
            res = book.resolve(alias)
            assert res is not None and res.matched == name


def test_no_model_falls_through_to_a_shorter_cheaper_name(book: PriceBook) -> None:
    # For every pair where one id extends another (gpt-4o / gpt-4o-mini,
    # o1 / o1-mini, gpt-5 / gpt-5-nano ...), each keeps its own price, and an
    # unknown extension of an id is not priced as that id.
    ids = list(catalog_doc()["models"])
    pairs = [(short, long) for short in ids for long in ids if long != short and long.startswith(short)]
    assert ("gpt-4o", "gpt-4o-mini") in pairs and ("o1", "o1-mini") in pairs
    for short, long in pairs:
        assert book.require(long).model == long
        assert book.require(short).model == short
        assert book.lookup(long + "-preview") is None
    assert book.lookup("gpt-4o-mini-search") is None
    assert book.require("gpt-4o-mini").input < book.require("gpt-4o").input


def test_anthropic_cache_multipliers_hold_for_every_claude_entry() -> None:
    # Claude 3 Haiku is the published exception: $0.30 write / $0.03 read on $0.25 input.
    haiku3 = catalog_doc()["models"]["claude-3-haiku"]
    assert (haiku3["cache_write"], haiku3["cache_read"], haiku3["cache_write_1h"]) == ("0.30", "0.03", "0.50")
    for name, spec in catalog_doc()["models"].items():
        if spec["provider"] != "anthropic" or name == "claude-3-haiku":
            continue
        base = D(str(spec["input"]))
        assert D(str(spec["cache_write"])) == base * D("1.25"), name
        assert D(str(spec["cache_write_1h"])) == base * 2, name
        assert D(str(spec["cache_read"])) == base * D("0.1"), name


def test_openai_entries_have_no_cache_write_charge() -> None:
    for name, spec in catalog_doc()["models"].items():
        if spec["provider"] == "openai":
            assert spec["cache_write"] is None and spec["cache_write_1h"] is None, name


def test_every_entry_names_its_source_and_test_model_is_absent() -> None:
    models = catalog_doc()["models"]
    assert "test-model" not in models
    assert all(isinstance(spec.get("source"), str) and spec["source"] for spec in models.values())


def test_lookup_is_cached_per_model_string(book: PriceBook) -> None:
    first = book.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert first is not None
    assert book.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0") is first


def test_default_book_is_shared() -> None:
    assert PriceBook.default() is PriceBook.default()


def test_require_suggests_close_matches(book: PriceBook) -> None:
    with pytest.raises(UnpricedModel) as info:
        book.require("gpt-4o-mimi")
    assert "gpt-4o-mini" in info.value.suggestions


# -- overrides and precedence ------------------------------------------------

TEST_MODEL = {"input": 1.00, "output": 10.00, "cache_read": 0.10, "cache_write": 1.25, "cache_write_1h": 2.00}


def test_config_override_from_yaml_floats_is_exact() -> None:
    book = PriceBook.build(overrides={"test-model": TEST_MODEL})
    price = book.require("test-model")
    assert price.cache_read == D("0.1")  # not Decimal(0.1) = 0.1000000000000000055...
    assert str(price.cache_read) == "0.1" and str(price.cache_write_1h) == "2.0"


def test_test_model_cost_from_config() -> None:
    from tokenfuse.usage import Usage

    price = PriceBook.build(overrides={"test-model": TEST_MODEL}).require("test-model")
    usage = Usage(input_uncached=100, cache_read=1000, cache_write=200, cache_write_1h=300, output=50)
    # 100*1 + 1000*0.10 + 200*1.25 + 300*2 + 50*10 = 1550 per million
    assert price.cost(usage) == D("0.00155")


def test_override_beats_litellm_beats_catalog(litellm_file: str) -> None:
    catalog_only = PriceBook.default().require("claude-sonnet-4-5")
    with_file = PriceBook.build(litellm_file=litellm_file).require("claude-sonnet-4-5")
    with_both = PriceBook.build(
        overrides={"claude-sonnet-4-5": {"input": "1.5", "output": "7.5"}}, litellm_file=litellm_file
    ).require("claude-sonnet-4-5")
    assert catalog_only.input == D("3")
    assert with_file.input == D("2")
    assert with_both.input == D("1.5") and with_both.cache_read is None


def test_override_of_a_catalog_id_covers_its_aliases_and_profiles() -> None:
    book = PriceBook.build(overrides={"claude-sonnet-4-5": {"input": 2, "output": 10}})
    assert book.require("claude-sonnet-4-5-20250929").input == D("2")
    assert book.require("global.anthropic.claude-sonnet-4-5-20250929-v1:0").input == D("2")
    # AWS still charges the regional premium on top of a negotiated base price.
    assert book.require("us.anthropic.claude-sonnet-4-5-20250929-v1:0").input == D("2.2")


def test_an_exact_override_of_a_profile_id_gets_no_extra_premium() -> None:
    book = PriceBook.build(overrides={"us.anthropic.claude-opus-4-6-v1": {"input": 4, "output": 20}})
    assert book.require("us.anthropic.claude-opus-4-6-v1").input == D("4")


def test_config_pydantic_overrides_are_accepted() -> None:
    from tokenfuse.config import PriceOverride

    override = PriceOverride(input=D("1.00"), output=D("10.00"), cache_write_1h=D("2"))
    price = PriceBook.build(overrides={"test-model": override}).require("test-model")  # type: ignore[dict-item]
    assert (price.input, price.cache_write_1h, price.cache_read) == (D("1.00"), D("2"), None)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input": "abc", "output": 1}, "input"),
        ({"input": 1, "output": -1}, "output"),
        ({"input": True, "output": 1}, "input"),
        ({"input": float("nan"), "output": 1}, "input"),
        ({"input": 1, "output": [1]}, "output"),
        ({"input": 1}, "output"),
        ({"input": 1, "output": 1, "cache_reads": 0.1}, "cache_reads"),
    ],
)
def test_bad_override_values_name_model_and_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError) as info:
        PriceBook.build(overrides={"my-model": fields})
    message = str(info.value)
    assert "my-model" in message and field in message


def test_override_that_is_not_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"prices\.my-model"):
        PriceBook.build(overrides={"my-model": 3})  # type: ignore[dict-item]


def test_catalog_parser_rejects_entries_without_source() -> None:
    with pytest.raises(ValueError, match="source"):
        parse_catalog({"models": {"m": {"input": "1", "output": "2"}}}, "x.json")


CATALOG_IDS = sorted(catalog_doc()["models"])


@given(st.sampled_from(CATALOG_IDS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12))
def test_a_word_appended_to_a_catalog_id_never_falls_back_to_that_id(model: str, word: str) -> None:
    # Only dates and Bedrock versions are ever stripped, so "<id>-<letters>" is
    # either itself a catalog id or alias (gpt-4o-mini, claude-3-5-haiku-latest)
    # or unpriced: no reduction step ever applies to it.
    requested = f"{model}-{word}"
    res = PriceBook.default().resolve(requested)
    assert res is None or res.steps in ((), (f"alias of {res.matched!r}",))


def test_the_latest_alias_is_an_explicit_alias_not_a_reduction(book: PriceBook) -> None:
    res = book.resolve("claude-3-5-haiku-latest")
    assert res is not None and res.steps == ("alias of 'claude-3-5-haiku'",)


def test_sonnet_4_and_4_5_carry_the_long_context_tier(book: PriceBook) -> None:
    for model in ("claude-sonnet-4-5-20250929", "claude-sonnet-4-20250514"):
        price = book.require(model)
        assert price.long_context is not None and price.long_context_threshold == 200_000
        assert (price.long_context.input, price.long_context.output) == (D("6"), D("22.50"))
        assert price.long_context.cache_write_1h == D("12")
    regional = book.require("eu.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert regional.long_context is not None and regional.long_context.input == D("6.6")
    assert book.require("claude-sonnet-4-6").long_context is None


# -- bounded caches and name length --------------------------------------------


def test_a_model_name_longer_than_the_maximum_is_unpriced_and_not_cached() -> None:
    from tokenfuse.pricing import MAX_MODEL_NAME

    book = PriceBook.build(overrides={"test-model": TEST_MODEL})
    padded = " " * 1_000_000 + "test-model"  # what reached 373 MB RSS in issue 9
    assert book.lookup(padded) is None
    assert book.resolve(padded) is None
    assert len(book._cache) == 0
    at_limit = " " * (MAX_MODEL_NAME - len("test-model")) + "test-model"
    assert book.lookup(at_limit) is not None
    assert book.lookup(at_limit + " ") is None


def test_the_price_cache_is_bounded_for_names_that_resolve() -> None:
    from tokenfuse.pricing.catalog import CACHE_SIZE

    book = PriceBook.build(overrides={"test-model": TEST_MODEL})
    for i in range(CACHE_SIZE + 1000):
        assert book.lookup(" " * (i % 200) + "test-model" + " " * (i // 200)) is not None
    assert len(book._cache) == CACHE_SIZE
    assert book.lookup("test-model") is not None  # evicted entries are simply recomputed
