from __future__ import annotations

from tokenfuse.pricing.names import candidates


def names(model: str) -> list[str]:
    return [c.name for c in candidates(model)]


def test_plain_name_has_only_itself() -> None:
    assert names("gpt-4o-mini") == ["gpt-4o-mini"]


def test_openai_snapshot_date_is_removed_last() -> None:
    assert names("gpt-4o-2024-08-06") == ["gpt-4o-2024-08-06", "gpt-4o"]


def test_bedrock_profile_id_reduces_step_by_step() -> None:
    assert names("us.anthropic.claude-sonnet-4-5-20250929-v1:0") == [
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
    ]
    assert candidates("us.anthropic.claude-sonnet-4-5-20250929-v1:0")[-1].geo == "us"


def test_arn_reduces_to_its_last_segment() -> None:
    arn = "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-opus-4-6-v1"
    got = candidates(arn)
    assert got[1].name == "eu.anthropic.claude-opus-4-6-v1"
    assert got[-1].name == "claude-opus-4-6"
    assert got[-1].geo == "eu"


def test_url_encoded_arn_is_decoded() -> None:
    arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fmeta.llama3-1-8b-instruct-v1%3A0"
    assert "meta.llama3-1-8b-instruct-v1:0" in names(arn)


def test_geo_prefixes_aws_uses() -> None:
    for geo in ("us", "eu", "apac", "au", "jp", "us-gov", "ca", "global"):
        got = candidates(f"{geo}.amazon.nova-pro-v1:0")
        assert got[1].name == "amazon.nova-pro-v1:0" and got[1].geo == geo


def test_a_dotted_name_that_is_not_a_profile_keeps_its_head() -> None:
    # "gpt-4.1" has a dot but no geography in front of it.
    assert names("gpt-4.1") == ["gpt-4.1"]
    assert names("us.model") == ["us.model"]  # no provider.model after the geography


def test_vertex_style_date_suffix() -> None:
    assert names("claude-sonnet-4-5@20250929")[-1] == "claude-sonnet-4-5"


def test_no_candidate_is_a_truncated_model_name() -> None:
    # Reductions only remove whole known affixes; a model name is never cut short.
    for model in ("gpt-4o-mini", "gpt-4o-audio-preview", "o1-mini", "gpt-5-nano", "claude-opus-4-1"):
        assert names(model) == [model]
