from __future__ import annotations

import pytest

from tokenfuse.simulator import prompts
from tokenfuse.simulator.prompts import BadRequest
from tokenfuse.simulator.tokens import TTL_1H, TTL_5M, Block


def test_chat_text_joins_strings_and_text_parts() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "héllo"}, {"type": "image_url", "image_url": {}}],
            },
        ],
    }
    assert prompts.chat_text(body) == "syshéllo".encode()


def test_chat_limit_prefers_max_completion_tokens() -> None:
    assert prompts.chat_limit({"max_completion_tokens": 5, "max_tokens": 9}) == 5
    assert prompts.chat_limit({"max_tokens": 9}) == 9
    assert prompts.chat_limit({}) is None
    with pytest.raises(BadRequest, match="max_tokens"):
        prompts.chat_limit({"max_tokens": 0})


def test_include_usage_needs_an_explicit_true() -> None:
    assert prompts.include_usage({"stream_options": {"include_usage": True}})
    assert not prompts.include_usage({"stream_options": {"include_usage": False}})
    assert not prompts.include_usage({})


def test_obfuscation_is_on_unless_turned_off() -> None:
    assert prompts.include_obfuscation({})
    assert prompts.include_obfuscation({"stream_options": {"include_usage": True}})
    assert not prompts.include_obfuscation({"stream_options": {"include_obfuscation": False}})


def test_responses_text_reads_instructions_and_items() -> None:
    body = {
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"type": "function_call_output", "call_id": "c", "output": "two"},
        ],
    }
    assert prompts.responses_text(body) == b"be briefonetwo"
    assert prompts.responses_text({"input": "plain"}) == b"plain"
    with pytest.raises(BadRequest):
        prompts.responses_text({"model": "m"})


def test_embedding_inputs_count_strings_by_bytes_and_token_arrays_by_length() -> None:
    assert prompts.embedding_inputs({"input": "abcde"}) == [2]
    assert prompts.embedding_inputs({"input": ["a", "abcdefghi"]}) == [1, 3]
    assert prompts.embedding_inputs({"input": [1, 2, 3]}) == [3]
    assert prompts.embedding_inputs({"input": [[1, 2], [3]]}) == [2, 1]
    with pytest.raises(BadRequest):
        prompts.embedding_inputs({"input": [{"x": 1}]})


def test_anthropic_blocks_follow_cache_order_and_markers() -> None:
    body = {
        "max_tokens": 10,
        "tools": [{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}],
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {"a": 1}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "ok"}]},
        ],
    }
    blocks = prompts.anthropic_blocks(body)
    assert blocks == [
        Block(b'{"input_schema":{},"name":"t"}', TTL_5M),
        Block(b"sys", TTL_1H),
        Block(b"hi"),
        Block(b'{"a":1}'),
        Block(b"ok"),
    ]


def test_anthropic_requires_max_tokens_except_for_counting() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadRequest, match="max_tokens"):
        prompts.anthropic_blocks(body)
    assert prompts.anthropic_blocks(body, need_max_tokens=False) == [Block(b"hi")]


def test_converse_cache_points_mark_the_block_before_them() -> None:
    body = {
        "system": [{"text": "sys"}, {"cachePoint": {"type": "default"}}],
        "messages": [
            {"role": "user", "content": [{"text": "q"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]}
        ],
        "inferenceConfig": {"maxTokens": 7},
    }
    assert prompts.converse_blocks(body) == [Block(b"sys", TTL_5M), Block(b"q", TTL_1H)]
    assert prompts.converse_limit(body) == 7
    assert prompts.converse_limit({"inferenceConfig": {"max_new_tokens": 3}}) == 3


def test_malformed_bodies_are_refused_with_the_field_named() -> None:
    with pytest.raises(BadRequest, match="messages"):
        prompts.chat_text({"model": "m"})
    with pytest.raises(BadRequest, match="model"):
        prompts.model_of({})
    with pytest.raises(BadRequest, match="prompt"):
        prompts.llama_text({"max_gen_len": 3})
    with pytest.raises(BadRequest, match="JSON object"):
        prompts.converse_blocks([1, 2])


def test_duplicate_keys_keep_the_last_by_default_or_the_first_when_asked() -> None:
    raw = b'{"model": "cheap", "nested": {"a": 1, "a": 2}, "model": "dear"}'
    assert prompts.parse_body(raw) == {"model": "dear", "nested": {"a": 2}}
    assert prompts.parse_body(raw, "first") == {"model": "cheap", "nested": {"a": 1}}
    with pytest.raises(prompts.BadRequest):
        prompts.parse_body(b"{nope", "first")


def test_chat_choices_default_bounds_and_param() -> None:
    assert prompts.chat_choices({}) == 1
    assert prompts.chat_choices({"n": None}) == 1
    assert prompts.chat_choices({"n": 128}) == 128
    for bad in (0, 129, True, "2", 1.5):
        with pytest.raises(prompts.BadRequest) as err:
            prompts.chat_choices({"n": bad})
        assert err.value.param == "n"


def test_server_tools_are_recognised_by_type() -> None:
    responses = {
        "tools": [{"type": "web_search"}, {"type": "web_search_preview_2025_03_11"}, {"type": "function"}]
    }
    assert prompts.responses_server_tools(responses) == {"web_search_requests": 2}
    assert prompts.responses_server_tools({"tools": [{"type": "file_search"}]}) == {}
    claude = {
        "tools": [{"type": "web_search_20250305", "name": "web_search"}, {"name": "f", "input_schema": {}}]
    }
    assert prompts.anthropic_server_tools(claude) == {"web_search_requests": 1, "web_fetch_requests": 0}
    assert prompts.anthropic_server_tools({"tools": [{"type": "web_fetch_20250910"}]}) == {
        "web_search_requests": 0,
        "web_fetch_requests": 1,
    }
    assert prompts.anthropic_server_tools({}) == {}


def test_previous_response_must_be_a_string() -> None:
    assert prompts.previous_response({}) is None
    assert prompts.previous_response({"previous_response_id": "resp_1"}) == "resp_1"
    with pytest.raises(prompts.BadRequest):
        prompts.previous_response({"previous_response_id": 7})
