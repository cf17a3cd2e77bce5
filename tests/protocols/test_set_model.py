"""`set_model` in each protocol module: what budget-aware routing forwards (docs/routing.md)."""

from __future__ import annotations

import json

from tokenfuse.gateway.upstream import bedrock_path
from tokenfuse.protocols import anthropic, bedrock, openai


def test_openai_chat_forwards_the_new_model_in_the_canonical_body() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    info = openai.parse_request("chat.completions", json.dumps(body).encode())
    openai.set_model(info, "gpt-4o-mini")
    sent = json.loads(openai.encode_body(info))
    assert info.model == "gpt-4o-mini" and sent == {**body, "model": "gpt-4o-mini"}
    # The model stays the body's first member, as the client sent it.
    assert openai.encode_body(info).startswith(b'{"model":"gpt-4o-mini",')


def test_openai_chat_to_a_reasoning_model_carries_max_tokens_over() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    info = openai.parse_request("chat.completions", json.dumps(body).encode())
    openai.set_model(info, "o4-mini")
    sent = json.loads(openai.encode_body(info))
    assert "max_tokens" not in sent and sent["max_completion_tokens"] == 50 and sent["model"] == "o4-mini"


def test_openai_routing_to_a_search_model_is_marked_unbounded() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    info = openai.parse_request("chat.completions", json.dumps(body).encode())
    assert not info.unbounded
    openai.set_model(info, "gpt-4o-search-preview")
    assert any("searches the web" in u for u in info.unbounded)


def test_openai_responses_and_embeddings() -> None:
    cases: tuple[tuple[str, dict[str, object]], ...] = (
        ("responses", {"model": "gpt-4o", "input": "hi", "max_output_tokens": 20}),
        ("embeddings", {"model": "text-embedding-3-large", "input": "hi"}),
    )
    for route, body in cases:
        info = openai.parse_request(route, json.dumps(body).encode())
        openai.set_model(info, "m2")
        assert json.loads(openai.encode_body(info)) == {**body, "model": "m2"}


def test_anthropic_messages_and_count_tokens() -> None:
    for route in ("messages", "count_tokens"):
        body = {"model": "claude-opus-4-1", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        info = anthropic.parse_request(route, json.dumps(body).encode())
        anthropic.set_model(info, "claude-haiku-4-5")
        assert info.model == "claude-haiku-4-5"
        assert json.loads(anthropic.encode_body(info)) == {**body, "model": "claude-haiku-4-5"}


def test_bedrock_model_is_the_url_path_and_the_body_is_untouched() -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 10}}
    raw = json.dumps(body).encode()
    info = bedrock.parse_request("converse", raw, "us.anthropic.claude-opus-4-1-20250805-v1%3A0")
    before = bedrock.encode_body(info)
    bedrock.set_model(info, "us.anthropic.claude-haiku-4-5-20251001-v1:0")
    assert bedrock.encode_body(info) == before
    # What the gateway forwards to (tokenfuse/gateway/app.py _upstream_request).
    assert bedrock_path(info.model, "converse") == "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
