from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfuse.protocols import bedrock
from tokenfuse.protocols.base import IMAGE_TOKEN_BOUND, ProtocolError, RequestInfo, compact_json
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.usage import Usage

from .clients import boto_call
from .test_sse import split
from .wire import (
    CONVERSE_USAGE,
    bedrock_exception,
    converse_stream,
    dumps,
    invoke_chunk,
    invoke_stream_anthropic,
)

TEXTS = ["The", " answer", ' is "42"', "\n", "für", " sure."]
TEXT_BYTES = sum(len(t.encode()) for t in TEXTS)
CONVERSE = {
    "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
    "inferenceConfig": {"maxTokens": 300},
}
CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def parse(route: str, body: dict[str, Any], model: str = CLAUDE) -> RequestInfo:
    return bedrock.parse_request(route, dumps(body), model)


# --- requests ---------------------------------------------------------------


def test_parse_converse_request() -> None:
    info = parse("converse_stream", CONVERSE)
    assert (info.protocol, info.route, info.model, info.stream, info.max_tokens) == (
        "bedrock",
        "converse_stream",
        CLAUDE,
        True,
        300,
    )
    assert info.prompt_bytes == len(dumps(CONVERSE))


def test_model_from_path_is_url_decoded_and_may_be_an_arn() -> None:
    arn = (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-1-20250805-v1:0"
    )
    quoted = arn.replace(":", "%3A").replace("/", "%2F")
    info = bedrock.parse_request(
        "invoke", dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "messages": []}), quoted
    )
    assert info.model == arn
    assert info.max_tokens == 9


def test_cache_points_and_ttl() -> None:
    body = {**CONVERSE, "system": [{"text": "long"}, {"cachePoint": {"type": "default"}}]}
    info = parse("converse", body)
    assert info.cache_writes_possible and not info.cache_1h
    body["system"] = [{"text": "long"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    info = parse("converse", body)
    assert info.cache_writes_possible and info.cache_1h
    assert not parse("converse", CONVERSE).cache_writes_possible


def test_converse_image_bytes_add_the_image_bound() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "iVBO"}}}]}]
    }
    raw = dumps(body)
    assert bedrock.parse_request("converse", raw, CLAUDE).prompt_bytes == len(raw) + IMAGE_TOKEN_BOUND


@pytest.mark.parametrize(
    ("model", "body", "path"),
    [
        (CLAUDE, {"anthropic_version": "bedrock-2023-05-31", "messages": []}, ("max_tokens",)),
        ("meta.llama3-3-70b-instruct-v1:0", {"prompt": "hi"}, ("max_gen_len",)),
        ("amazon.titan-text-express-v1", {"inputText": "hi"}, ("textGenerationConfig", "maxTokenCount")),
        ("us.amazon.nova-pro-v1:0", {"messages": []}, ("inferenceConfig", "maxTokens")),
        (
            "amazon.nova-lite-v1:0",
            {"messages": [], "inferenceConfig": {"max_new_tokens": 5}},
            ("inferenceConfig", "max_new_tokens"),
        ),
        ("mistral.mistral-large-2407-v1:0", {"prompt": "hi"}, ("max_tokens",)),
        ("openai.gpt-oss-120b-1:0", {"messages": []}, ("max_completion_tokens",)),
        ("openai.gpt-oss-20b-1:0", {"messages": [], "max_tokens": 3}, ("max_tokens",)),
        ("moonshotai.kimi-k2.5", {"messages": []}, ("max_tokens",)),
        # An application inference profile does not name its model: the body decides.
        (
            "arn:aws:bedrock:us-east-1:1:application-inference-profile/a1b2c3",
            {"anthropic_version": "bedrock-2023-05-31", "messages": []},
            ("max_tokens",),
        ),
    ],
)
def test_invoke_set_max_tokens_per_family(model: str, body: dict[str, Any], path: tuple[str, ...]) -> None:
    info = parse("invoke", body, model)
    bedrock.set_max_tokens(info, 777)
    obj: Any = info.body
    for key in path:
        obj = obj[key]
    assert obj == 777 and info.max_tokens == 777
    assert bedrock.parse_request("invoke", bedrock.encode_body(info), model).max_tokens == 777


def test_converse_set_max_tokens_creates_inference_config() -> None:
    info = parse("converse", {"messages": []})
    assert info.max_tokens is None
    bedrock.set_max_tokens(info, 64)
    assert info.body["inferenceConfig"] == {"maxTokens": 64}


@pytest.mark.parametrize(
    ("route", "body", "model", "fragment"),
    [
        ("converse", b"\x80", CLAUDE, "not valid UTF-8"),
        ("converse", b"{]", CLAUDE, "not valid JSON"),
        ("converse", b"null", CLAUDE, "got a JSON null"),
        ("converse", dumps(CONVERSE), "", "model id is missing from the URL"),
        ("converse", dumps({"messages": "x"}), CLAUDE, "'messages' must be an array"),
        ("converse", dumps({"inferenceConfig": []}), CLAUDE, "'inferenceConfig' must be an object"),
        ("converse", dumps({"inferenceConfig": {"maxTokens": "9"}}), CLAUDE, "'inferenceConfig.maxTokens'"),
        ("invoke", dumps({"anthropic_version": "x", "max_tokens": "9"}), CLAUDE, "'max_tokens' must be"),
        (
            "invoke",
            dumps({"textGenerationConfig": {"maxTokenCount": -4}}),
            "amazon.titan-text-lite-v1",
            "'textGenerationConfig.maxTokenCount'",
        ),
    ],
)
def test_bad_input_raises_validation_exception(route: str, body: bytes, model: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        bedrock.parse_request(route, body, model)
    assert (exc.value.status, exc.value.error_type) == (400, "ValidationException")
    assert fragment in exc.value.message


# --- non-stream usage -------------------------------------------------------

EXPECTED_CONVERSE = Usage(input_uncached=120, cache_read=3000, cache_write=96, cache_write_1h=1000, output=45)


def test_converse_usage() -> None:
    body = dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
            "stopReason": "end_turn",
            "usage": CONVERSE_USAGE,
            "metrics": {"latencyMs": 10},
        }
    )
    assert bedrock.usage_from_response("converse", body, {}) == EXPECTED_CONVERSE


def test_converse_usage_without_cache_details_is_five_minute() -> None:
    u = {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11, "cacheWriteInputTokens": 40}
    assert bedrock.usage_from_response("converse", dumps({"usage": u}), {}) == Usage(
        input_uncached=5, cache_write=40, output=6
    )


def test_invoke_prefers_headers_and_splits_writes_from_the_anthropic_body() -> None:
    headers = {
        "x-amzn-bedrock-input-token-count": "11",
        "x-amzn-bedrock-output-token-count": "222",
        "x-amzn-bedrock-cache-read-input-token-count": "3333",
        "x-amzn-bedrock-cache-write-input-token-count": "444",
        "x-amzn-bedrock-invocation-latency": "999",
    }
    body = dumps(
        {
            "type": "message",
            "usage": {
                "input_tokens": 1,
                "output_tokens": 2,
                "cache_creation_input_tokens": 444,
                "cache_creation": {"ephemeral_5m_input_tokens": 44, "ephemeral_1h_input_tokens": 400},
            },
        }
    )
    assert bedrock.usage_from_response("invoke", body, headers) == Usage(
        input_uncached=11, cache_read=3333, cache_write=44, cache_write_1h=400, output=222
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "type": "message",
                "usage": {"input_tokens": 7, "cache_read_input_tokens": 70, "output_tokens": 8},
            },
            Usage(input_uncached=7, cache_read=70, output=8),
        ),
        (
            {
                "output": {},
                "usage": {
                    "inputTokens": 9,
                    "outputTokens": 4,
                    "totalTokens": 13,
                    "cacheReadInputTokenCount": 2,
                    "cacheWriteInputTokenCount": 1,
                },
            },
            Usage(input_uncached=9, cache_read=2, cache_write=1, output=4),
        ),
        (
            {
                "generation": "hi",
                "prompt_token_count": 17,
                "generation_token_count": 5,
                "stop_reason": "stop",
            },
            Usage(input_uncached=17, output=5),
        ),
        (
            {"inputTextTokenCount": 6, "results": [{"tokenCount": 12, "outputText": "x"}]},
            Usage(input_uncached=6, output=12),
        ),
        (
            {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3}},
            Usage(input_uncached=30, output=3),
        ),
    ],
)
def test_invoke_body_usage_per_family_when_headers_are_absent(body: dict[str, Any], expected: Usage) -> None:
    assert bedrock.usage_from_response("invoke", dumps(body), {}) == expected


def test_error_bodies_have_no_usage() -> None:
    err = dumps({"message": "Malformed input request"})
    assert bedrock.usage_from_response("converse", err, {}) is None
    assert bedrock.usage_from_response("invoke", err, {}) is None


# --- streams ----------------------------------------------------------------


def run(route: str, chunks: list[bytes], model: str = CLAUDE) -> tuple[bytes, bedrock.StreamMeter]:
    body = (
        CONVERSE
        if route.startswith("converse")
        else {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": []}
    )
    meter = bedrock.StreamMeter(parse(route, body, model))
    out = b"".join(meter.feed(c) for c in chunks) + meter.finish()
    return out, meter


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=15))
def test_converse_stream_usage_from_metadata_for_any_chunking(cuts: list[int]) -> None:
    upstream = converse_stream(TEXTS)
    out, meter = run("converse_stream", split(upstream, cuts))
    assert out == upstream
    assert meter.usage(True) == EXPECTED_CONVERSE
    assert meter.text_bytes == TEXT_BYTES


def test_converse_stream_without_metadata_is_estimated() -> None:
    _, meter = run("converse_stream", [converse_stream(TEXTS, usage=None)])
    usage = meter.usage(False)
    assert usage.estimated and usage.output == tokens_from_bytes(TEXT_BYTES)
    assert usage.input_uncached == tokens_from_bytes(len(dumps(CONVERSE)))


def test_converse_stream_exception_event_is_forwarded_and_usage_estimated() -> None:
    upstream = converse_stream(TEXTS[:2], usage=None) + bedrock_exception("modelStreamErrorException", "boom")
    out, meter = run("converse_stream", [upstream])
    assert out == upstream
    assert meter.usage(True).estimated


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=15))
def test_invoke_stream_uses_invocation_metrics_for_any_chunking(cuts: list[int]) -> None:
    upstream = invoke_stream_anthropic(TEXTS)
    out, meter = run("invoke_stream", split(upstream, cuts))
    assert out == upstream
    assert meter.usage(True) == Usage(
        input_uncached=12, cache_read=0, cache_write=48, cache_write_1h=2000, output=77
    )
    assert meter.text_bytes == TEXT_BYTES


def test_invoke_stream_without_metrics_falls_back_to_anthropic_events() -> None:
    _, meter = run("invoke_stream", [invoke_stream_anthropic(TEXTS, metrics=False)])
    # message_delta was seen but the authoritative metrics were not: figures kept, marked estimated.
    usage = meter.usage(True)
    assert usage.estimated
    assert (usage.input_uncached, usage.cache_write, usage.cache_write_1h) == (12, 48, 2000)
    assert usage.output == max(77, tokens_from_bytes(TEXT_BYTES))


def test_crc_failure_is_an_upstream_break_usage_so_far_estimated() -> None:
    first = invoke_chunk(
        {"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}
    )
    second = bytearray(
        invoke_chunk({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "abc"}})
    )
    second[len(second) - 10] ^= 0xFF  # a payload byte: the message CRC no longer matches
    later = invoke_stream_anthropic(TEXTS)
    out, meter = run("invoke_stream", [first, bytes(second), later])
    assert out == first + bytes(second) + later
    assert meter.broken
    usage = meter.usage(False)
    # Nothing after the break is trusted, not even the later metrics.
    assert usage.estimated and usage.input_uncached == 12 and usage.output == 1


def test_invoke_stream_other_families_count_text() -> None:
    chunks = [
        invoke_chunk({"generation": "Bonjour", "prompt_token_count": None, "generation_token_count": 1}),
        invoke_chunk(
            {
                "generation": " monde",
                "prompt_token_count": 9,
                "generation_token_count": 3,
                "stop_reason": "stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 9,
                    "outputTokenCount": 3,
                    "invocationLatency": 1,
                    "firstByteLatency": 1,
                },
            }
        ),
    ]
    _, meter = run("invoke_stream", chunks, "meta.llama3-1-8b-instruct-v1:0")
    assert meter.text_bytes == len("Bonjour monde")
    assert meter.usage(True) == Usage(input_uncached=9, output=3)


def test_bad_base64_chunk_is_ignored() -> None:
    from tokenfuse.protocols.eventstream import encode_event

    _, meter = run("invoke_stream", [encode_event("chunk", dumps({"bytes": "!!notbase64!!"}))])
    assert meter.usage(True).estimated


# --- errors through botocore ------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "standard", "adaptive"])
def test_non_retryable_error_is_parsed_and_not_retried_by_botocore(mode: str) -> None:
    err, calls = boto_call(
        *bedrock.error_response(400, "ServiceQuotaExceededException", "Budget spent.", retryable=False), mode
    )
    assert type(err).__name__ == "ServiceQuotaExceededException"
    assert err.response["Error"]["Message"] == "Budget spent."
    assert calls == 1


def test_non_retryable_throttling_is_rewritten_to_a_code_botocore_does_not_retry() -> None:
    status, headers, body = bedrock.error_response(429, "ThrottlingException", "stop", retryable=False)
    assert status == 400 and ("x-amzn-errortype", "ServiceQuotaExceededException") in headers
    _, calls = boto_call(status, headers, body, "standard")
    assert calls == 1


def test_stream_exception_frames_decode() -> None:
    from tokenfuse.protocols.eventstream import EventStreamDecoder

    (msg,) = EventStreamDecoder().feed(bedrock.stream_exception("throttlingException", "slow down"))
    assert msg.headers[":exception-type"] == "throttlingException"
    assert msg.payload == b'{"message":"slow down"}'


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=10))
def test_invoke_stream_nova_family(cuts: list[int]) -> None:
    metrics = {
        "inputTokenCount": 40,
        "outputTokenCount": 6,
        "invocationLatency": 5,
        "firstByteLatency": 2,
        "cacheReadInputTokenCount": 900,
        "cacheWriteInputTokenCount": 0,
    }
    upstream = b"".join(
        [
            invoke_chunk({"messageStart": {"role": "assistant"}}),
            invoke_chunk({"contentBlockDelta": {"delta": {"text": "Hallo"}, "contentBlockIndex": 0}}),
            invoke_chunk({"contentBlockDelta": {"delta": {"text": " Welt"}, "contentBlockIndex": 0}}),
            invoke_chunk({"contentBlockStop": {"contentBlockIndex": 0}}),
            invoke_chunk({"messageStop": {"stopReason": "end_turn"}}),
            invoke_chunk(
                {
                    "metadata": {"usage": {"inputTokens": 40, "outputTokens": 6}},
                    "amazon-bedrock-invocationMetrics": metrics,
                }
            ),
        ]
    )
    out, meter = run("invoke_stream", split(upstream, cuts), "us.amazon.nova-lite-v1:0")
    assert out == upstream
    assert meter.text_bytes == len("Hallo Welt")
    assert meter.usage(True) == Usage(input_uncached=40, cache_read=900, output=6)


def test_invoke_stream_gpt_oss_family_cut_short_is_estimated() -> None:
    chunks = [
        invoke_chunk(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "abcdefgh" * 4}}],
            }
        ),
    ]
    _, meter = run("invoke_stream", chunks, "openai.gpt-oss-120b-1:0")
    usage = meter.usage(False)
    assert usage.estimated and usage.output == tokens_from_bytes(32)


# --- output limits, choices and what the body does not bound ----------------


@pytest.mark.parametrize(
    ("route", "body", "model", "field"),
    [
        ("converse", {"inferenceConfig": {"maxTokens": 0}}, CLAUDE, "inferenceConfig.maxTokens"),
        ("invoke", {"anthropic_version": "x", "max_tokens": 0, "messages": []}, CLAUDE, "'max_tokens'"),
        ("invoke", {"prompt": "hi", "max_gen_len": 0}, "meta.llama3-3-70b-instruct-v1:0", "max_gen_len"),
        (
            "invoke",
            {"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 0}},
            "amazon.titan-text-express-v1",
            "textGenerationConfig.maxTokenCount",
        ),
        (
            "invoke",
            {"messages": [], "inferenceConfig": {"maxTokens": 0}},
            "amazon.nova-pro-v1:0",
            "maxTokens",
        ),
        ("invoke", {"messages": [], "max_completion_tokens": 0}, "openai.gpt-oss-120b-1:0", "max_completion"),
    ],
)
def test_output_limits_of_zero_are_refused(route: str, body: dict[str, Any], model: str, field: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse(route, body, model)
    assert (exc.value.status, exc.value.error_type) == (400, "ValidationException")
    assert field in exc.value.message and "must be at least 1" in exc.value.message


def test_invoke_bound_is_the_largest_limit_of_any_family_and_all_are_rewritten() -> None:
    # A Llama field in a body that looks like Anthropic's: whichever the model reads is bounded.
    body = {"anthropic_version": "bedrock-2023-05-31", "messages": [], "max_tokens": 10, "max_gen_len": 5000}
    arn = "arn:aws:bedrock:us-east-1:1:application-inference-profile/a1b2c3"
    info = parse("invoke", body, arn)
    assert info.max_tokens == 5000
    bedrock.set_max_tokens(info, 100)
    assert (info.body["max_tokens"], info.body["max_gen_len"]) == (100, 100)
    assert bedrock.encode_body(info) == compact_json(info.body)


def test_converse_additional_model_fields_are_bounded_and_rewritten() -> None:
    body = {**CONVERSE, "additionalModelRequestFields": {"max_tokens": 9000, "top_k": 5}}
    info = parse("converse", body)
    assert info.max_tokens == 9000
    bedrock.set_max_tokens(info, 300)
    assert info.body["additionalModelRequestFields"] == {"max_tokens": 300, "top_k": 5}
    assert info.body["inferenceConfig"]["maxTokens"] == 300
    assert json.loads(bedrock.encode_body(info)) == info.body


@pytest.mark.parametrize(
    ("route", "body", "choices"),
    [
        ("invoke", {"prompt": "hi", "num_generations": 5}, 5),
        ("invoke", {"prompt": "hi", "numResults": 3}, 3),
        ("invoke", {"messages": [], "n": 4}, 4),
        ("converse", {**CONVERSE, "additionalModelRequestFields": {"n": 6}}, 6),
    ],
)
def test_multiple_generations_are_choices(route: str, body: dict[str, Any], choices: int) -> None:
    assert parse(route, body, "cohere.command-r-v1:0").choices == choices


def test_too_many_generations_are_refused() -> None:
    with pytest.raises(ProtocolError, match="between 1 and 128"):
        parse("invoke", {"prompt": "hi", "n": 1000}, "cohere.command-r-v1:0")


@pytest.mark.parametrize(
    ("route", "body", "model", "reason"),
    [
        (
            "converse",
            CONVERSE,
            "arn:aws:bedrock:us-east-1:123456789012:prompt/PROMPT12345",
            "Prompt management",
        ),
        (
            "converse",
            {"promptVariables": {"topic": {"text": "x"}}},
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aprompt%2FP1%3A2",
            "Prompt management",
        ),
        (
            "converse",
            {**CONVERSE, "toolConfig": {"tools": [{"systemTool": {"name": "nova_grounding"}}]}},
            "us.amazon.nova-premier-v1:0",
            "systemTool={'name': 'nova_grounding'}",
        ),
        (
            "invoke",
            {
                "anthropic_version": "x",
                "max_tokens": 5,
                "messages": [],
                "tools": [{"type": "web_search_20250305"}],
            },
            CLAUDE,
            "type='web_search_20250305'",
        ),
    ],
)
def test_what_the_body_does_not_bound_is_named(
    route: str, body: dict[str, Any], model: str, reason: str
) -> None:
    info = parse(route, body, model)
    assert any(reason in r for r in info.unbounded), info.unbounded


def test_prompt_variables_alone_are_named() -> None:
    info = parse("converse", {**CONVERSE, "promptVariables": {"a": {"text": "b"}}})
    assert info.unbounded == ("promptVariables: fills a prompt held by Bedrock",)


@pytest.mark.parametrize(
    ("extra", "priced"),
    [
        ({"performanceConfig": {"latency": "optimized"}}, "performanceConfig.latency='optimized'"),
        ({"serviceTier": {"type": "priority"}}, "serviceTier.type='priority'"),
        ({"serviceTier": {"type": "reserved"}}, "serviceTier.type='reserved'"),
        ({"guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}}, "guardrailConfig"),
    ],
)
def test_priced_options_are_named(extra: dict[str, Any], priced: str) -> None:
    info = parse("converse", {**CONVERSE, **extra})
    assert len(info.priced_options) == 1 and priced in info.priced_options[0]


def test_standard_and_cheaper_options_are_not_priced() -> None:
    extra = {"performanceConfig": {"latency": "standard"}, "serviceTier": {"type": "flex"}}
    info = parse("converse", {**CONVERSE, **extra})
    assert (info.priced_options, info.unbounded) == ((), ())
    assert parse("converse", {**CONVERSE, "serviceTier": {"type": "default"}}).priced_options == ()
