from __future__ import annotations

from decimal import Decimal

import pytest

from tokenfuse.billing.usagetypes import (
    canonical_model,
    classify,
    model_supports_caching,
    token_class,
    unit_multiplier,
    usage_type_model,
)


@pytest.mark.parametrize(
    ("usage_type", "cls", "model"),
    [
        ("USE1-Claude4.6Opus-input-tokens", "input_uncached", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-output-tokens", "output", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-cache-read-input-token-count", "cache_read", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-cache-write-input-token-count", "cache_write", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-input-tokens-cross-region-global", "input_uncached", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-output-tokens-flex", "output", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-mantle-input-tokens-standard", "input_uncached", "Claude4.6Opus"),
        ("USE1-Claude4.6Opus-mantle-output-tokens-priority", "output", "Claude4.6Opus"),
        ("use1-claude4.6opus-INPUT-TOKENS", "input_uncached", "claude4.6opus"),
        ("EU-Claude3.5Sonnet-output-tokens", "output", "Claude3.5Sonnet"),
        ("USW2-MP:USW2_InputTokenCount-Units", "input_uncached", None),
        ("USW2-MP:USW2_OutputTokenCount-Units", "output", None),
        ("USW2-MP:USW2_CacheReadInputTokenCount_Global-Units", "cache_read", None),
        ("USW2-MP:USW2_CacheWriteInputTokenCount-Units", "cache_write", None),
        ("USW2-MP:USW2_input_tokens_standard-Units", "input_uncached", None),
        ("USW2-MP:USW2_output_tokens_standard-Units", "output", None),
    ],
)
def test_bedrock_usage_types_both_generations(usage_type: str, cls: str, model: str | None) -> None:
    assert token_class(usage_type) == cls
    assert usage_type_model(usage_type) == model


@pytest.mark.parametrize("usage_type", ["USE1-BoxUsage:m7i.xlarge", "USE1-TimedStorage-ByteHrs", "USE1-Lambda-GB-Second", None, ""])
def test_non_token_usage_types(usage_type: str | None) -> None:
    assert token_class(usage_type) is None


@pytest.mark.parametrize(
    ("names", "key"),
    [
        (
            [
                "Claude4.5Sonnet",
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5",
                "Claude Sonnet 4.5 (Amazon Bedrock Edition)",
                "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            ],
            "claude-sonnet-4.5",
        ),
        (["Claude3.5Sonnet", "anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet-20241022"], "claude-sonnet-3.5"),
        (["Claude4.6Opus", "claude-opus-4-6"], "claude-opus-4.6"),
        (["NovaPro", "amazon.nova-pro-v1:0", "us.amazon.nova-pro-v1:0"], "novapro"),
    ],
)
def test_one_model_key_however_it_is_spelt(names: list[str], key: str) -> None:
    assert {canonical_model(n) for n in names} == {key}


def test_distinct_models_stay_distinct() -> None:
    assert canonical_model("claude-sonnet-4-5") != canonical_model("claude-sonnet-4")
    assert canonical_model("claude-opus-4-1") != canonical_model("claude-opus-4-6")
    assert canonical_model("Claude4.5Haiku") != canonical_model("Claude4.5Sonnet")


def test_caching_support() -> None:
    assert model_supports_caching("claude-sonnet-4.5")
    assert model_supports_caching("claude-sonnet-3.5")
    assert not model_supports_caching("claude-haiku-3")
    assert model_supports_caching("novapro")
    assert not model_supports_caching("llama3.170b")
    assert not model_supports_caching(None)


@pytest.mark.parametrize(
    ("unit", "mult"),
    [("1K tokens", 1000), ("1k Tokens", 1000), ("Units", 1), ("tokens", 1), (None, 1), ("1M tokens", 1_000_000),
     ("Million Tokens", 1_000_000)],
)
def test_pricing_unit_multiplier(unit: str | None, mult: int) -> None:
    assert unit_multiplier(unit) == Decimal(mult)


def test_classify_kinds() -> None:
    assert classify("amazonbedrock", "USE1-Claude4.5Sonnet-input-tokens", "InvokeModel", None).kind == "inference"
    mp = classify("awsmarketplace", "USW2-MP:USW2_OutputTokenCount-Units", None, "Claude Sonnet 4.5 (Amazon Bedrock Edition)")
    assert (mp.kind, mp.token_class, mp.model) == ("inference", "output", "claude-sonnet-4.5")
    assert classify("amazonbedrock", "USE1-ProvisionedThroughput-ModelUnits", None, None).kind == "bedrock"
    assert classify("amazon elastic compute cloud", "USE1-BoxUsage", None, None).kind == "compute"
    assert classify("awslambda", "Lambda-GB-Second", None, None).kind == "compute"
    assert classify("amazons3", "TimedStorage", None, None).kind == "other"
    # Token-looking usage types of an unrelated service are not Bedrock inference.
    assert classify("amazoncomprehend", "USE1-input-tokens", None, None).kind == "other"


def test_unknown_usage_type_with_an_inference_operation_still_counts() -> None:
    k = classify("amazonbedrock", "USE1-SomeNewModel-weird-units", "InvokeModelInference", None)
    assert (k.kind, k.token_class) == ("inference", None)
    assert classify("amazonbedrock", "USE1-SomeNewModel-weird-units", "Converse", None).kind == "inference"
    assert classify("amazonbedrock", "USE1-ProvisionedThroughput", "CreateProvisionedModelThroughput", None).kind == "bedrock"
