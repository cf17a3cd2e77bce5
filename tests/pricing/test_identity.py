"""One identity per model: `canonical_model` and `canonical_pattern`."""

from __future__ import annotations

import pytest

from tokenfuse.pricing import MAX_MODEL_NAME, PriceBook, canonical_model, canonical_pattern
from tokenfuse.pricing.catalog import CACHE_SIZE, TRUNCATED

OPUS_4_6 = [
    "claude-opus-4-6",
    "CLAUDE-OPUS-4-6",
    "claude-opus-4-6 ",
    "\tClaude-Opus-4-6\n",
    "claude-opus-4-6@20260101",
    "claude-opus-4-6-20260101",
    "claude%2Dopus%2D4%2D6",
    "%20claude-opus-4-6",
    "anthropic.claude-opus-4-6-v1",
    "anthropic.claude-opus-4-6-v1:0",
    "us.anthropic.claude-opus-4-6-v1",
    "eu.anthropic.claude-opus-4-6-v1",
    "apac.anthropic.claude-opus-4-6-v1",
    "global.anthropic.claude-opus-4-6-v1",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1",
    "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-6-v1",
    "ARN:AWS:BEDROCK:US-EAST-1::FOUNDATION-MODEL/ANTHROPIC.CLAUDE-OPUS-4-6-V1",
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-opus-4-6-v1",
]


@pytest.mark.parametrize("spelling", OPUS_4_6)
def test_every_spelling_of_a_catalog_model_is_its_catalog_key(spelling: str) -> None:
    assert canonical_model(spelling) == "claude-opus-4-6"


@pytest.mark.parametrize("spelling", OPUS_4_6)
def test_pricing_and_identity_agree(spelling: str) -> None:
    book = PriceBook.default()
    resolution = book.resolve(spelling)
    assert resolution is not None and resolution.matched == canonical_model(spelling, book)


@pytest.mark.parametrize(
    ("sent", "identity"),
    [
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),  # a catalog alias
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # its own entry (its own price): its own model
        ("gpt-4o-mini", "gpt-4o-mini"),  # never reduced to gpt-4o
        ("us.amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0"),
        ("amazon.nova-pro", "amazon.nova-pro-v1:0"),  # reduces like the catalog key does
        ("TEST-MODEL", "test-model"),  # not in the catalog: normalised
        (" test-model ", "test-model"),
        ("test-model-2024-01-01", "test-model"),
        ("test%2Dmodel@20240101", "test-model"),
        ("us.vendor.some-model-v2:0", "vendor.some-model"),
        ("", ""),
    ],
)
def test_identities(sent: str, identity: str) -> None:
    assert canonical_model(sent) == identity


@pytest.mark.parametrize("spelling", [*OPUS_4_6, "gpt-4o-2024-05-13", "TEST-MODEL-2024-01-01", "x" * 10_000])
def test_an_identity_is_its_own_identity(spelling: str) -> None:
    once = canonical_model(spelling)
    assert canonical_model(once) == once
    assert canonical_pattern(once) == once


def test_config_overrides_and_litellm_files_do_not_change_identity(litellm_file: str) -> None:
    # The LiteLLM file holds `us.anthropic.claude-opus-4-6-v1` as a key of its own,
    # and prices it from there; the identity is still the catalog's.
    book = PriceBook.build(overrides={"test-model": {"input": 1, "output": 2}}, litellm_file=litellm_file)
    resolution = book.resolve("us.anthropic.claude-opus-4-6-v1")
    assert resolution is not None and resolution.layer == "litellm"
    for spelling in OPUS_4_6:
        assert canonical_model(spelling, book) == "claude-opus-4-6"
    assert canonical_model("TEST-MODEL", book) == "test-model"


def test_a_name_too_long_is_cut_and_marked_and_never_cached() -> None:
    book = PriceBook.build()
    huge = "Test-Model" + "x" * 1_000_000
    ident = canonical_model(huge, book)
    assert ident == ("test-model" + "x" * (MAX_MODEL_NAME - 10)) + TRUNCATED
    assert len(book._identities) == 0
    assert canonical_model(" " * 1_000_000 + "test-model", book) == "test-model"  # the name itself is short


def test_the_identity_cache_is_bounded() -> None:
    book = PriceBook.build()
    for i in range(CACHE_SIZE + 500):
        canonical_model(f"model-{i}", book)
    assert len(book._identities) == CACHE_SIZE


@pytest.mark.parametrize(
    ("pattern", "reduced"),
    [
        ("*opus*", "*opus*"),
        ("*Opus*", "*opus*"),
        ("claude-opus-4-6*", "claude-opus-4-6*"),
        ("anthropic.claude-opus-*", "claude-opus-*"),
        ("us.anthropic.claude-*", "claude-*"),
        ("anthropic.*", "claude*"),  # every Claude model
        ("us.*", "us.*"),  # a bare geography names no model: left as is, never widened to `*`
        ("*-v1", "*-v1"),  # tails of globs are never cut
        ("US.Anthropic.Claude-Opus-4-6-v1", "claude-opus-4-6"),  # no glob characters: a model name
    ],
)
def test_patterns(pattern: str, reduced: str) -> None:
    assert canonical_pattern(pattern) == reduced
