"""Parsing once: the checks every protocol shares, on the decoded body."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfuse.protocols import anthropic, bedrock, openai
from tokenfuse.protocols.base import (
    DOCUMENT_TOKEN_BOUND,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    ProtocolError,
    RequestInfo,
    compact_json,
    parse_body,
)
from tokenfuse.protocols.base import (
    dumps as canonical_dumps,
)

from .wire import dumps

PROTOCOLS: list[tuple[ModuleType, str, str | None]] = [
    (openai, "invalid_request_error", None),
    (anthropic, "invalid_request_error", None),
    (bedrock, "ValidationException", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
]
EVERY_ROUTE = [(proto, route, model) for proto, _, model in PROTOCOLS for route in proto.ROUTES]


def _refusal(body: bytes) -> list[ProtocolError]:
    """The error each protocol's messages-like route raises for `body`."""
    errors = []
    for proto, error_type, model in PROTOCOLS:
        route = proto.ROUTES[0]
        with pytest.raises(ProtocolError) as exc:
            proto.parse_request(route, body, model)
        assert (exc.value.status, exc.value.error_type) == (400, error_type)
        errors.append(exc.value)
    return errors


# --- duplicate keys, depth, numbers ------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"model":"test-model","messages":[],"model":"claude-opus-4-6"}', "model"),
        (b'{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}', "content"),
        (b'{"model":"m","messages":[],"inferenceConfig":{"maxTokens":5,"maxTokens":4000}}', "maxTokens"),
        (b'{"model":"m","messages":[],"x":[[[{"k":{"deep":1,"deep":2}}]]]}', "deep"),
        (b'{"model":"m","messages":[],"m\\u006fdel":"other"}', "model"),
    ],
)
def test_a_repeated_key_at_any_depth_is_refused_naming_it(body: bytes, key: str) -> None:
    for err in _refusal(body):
        assert f"repeats the key {key!r}" in err.message


def test_the_same_key_in_different_objects_is_fine() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}'
    assert openai.parse_request("chat.completions", body).body["model"] == "m"


def _nested(depth: int) -> bytes:
    """A body whose deepest container sits `depth` levels down (the body is level 1)."""
    return b'{"model":"m","messages":[],"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_up_to_the_limit_is_accepted_and_beyond_it_refused() -> None:
    assert parse_body(_nested(MAX_JSON_DEPTH), "e").obj["model"] == "m"
    for err in _refusal(_nested(MAX_JSON_DEPTH + 1)):
        assert f"more than {MAX_JSON_DEPTH} levels deep" in err.message


def test_nesting_past_the_recursion_limit_is_a_400_not_a_recursion_error() -> None:
    for err in _refusal(_nested(200_000)):
        assert "levels deep" in err.message


def test_real_tool_schemas_are_far_shallower_than_the_limit() -> None:
    # A three-level nested tool schema, as agents send them: depth 17.
    leaf: dict[str, Any] = {"type": "string"}
    for _ in range(3):
        leaf = {"type": "object", "properties": {"child": leaf, "list": {"type": "array", "items": leaf}}}
    body = {"model": "m", "messages": [], "tools": [{"type": "function", "function": {"parameters": leaf}}]}
    assert parse_body(dumps(body), "e").obj == body


@pytest.mark.parametrize(
    ("number", "fragment"),
    [
        (b"1" * 5000, "more than 30 digits"),  # Python's own int() limit is 4,300 digits
        (b"-" + b"9" * (MAX_INT_DIGITS + 1), "more than 30 digits"),
        (b"1" * (MAX_INT_DIGITS + 1), "more than 30 digits"),
        (b"1e400", "out of range"),
        (b"-1e400", "out of range"),
        (b"0." + b"1" * 100, "longer than 64 characters"),
        (b"NaN", "contains NaN"),
        (b"Infinity", "contains Infinity"),
        (b"-Infinity", "contains -Infinity"),
    ],
)
def test_absurd_numbers_are_refused(number: bytes, fragment: str) -> None:
    body = b'{"model":"m","messages":[],"temperature":' + number + b"}"
    for err in _refusal(body):
        assert fragment in err.message


def test_an_unpaired_surrogate_is_refused_and_a_pair_is_text() -> None:
    for err in _refusal(b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'):
        assert "unpaired surrogate" in err.message
    pair = b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    assert "\U0001f600".encode() in anthropic.encode_body(anthropic.parse_request("messages", pair))


def test_numbers_of_ordinary_size_pass() -> None:
    body = b'{"model":"m","messages":[],"seed":' + b"9" * MAX_INT_DIGITS + b',"temperature":1e-7}'
    obj = parse_body(body, "e").obj
    assert obj["seed"] == 10**MAX_INT_DIGITS - 1 and obj["temperature"] == 1e-7


# --- media, cache markers and TTL from the decoded object ------------------


def _prompt_bytes(body: bytes) -> int:
    return openai.parse_request("chat.completions", body).prompt_bytes


def test_an_escaped_media_type_counts_like_a_plain_one() -> None:
    plain = b'{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}'
    escaped = plain.replace(b"document", b"docum\\u0065nt")
    assert _prompt_bytes(escaped) == _prompt_bytes(plain) == len(plain) + DOCUMENT_TOKEN_BOUND
    key_escaped = b'{"model":"m","messages":[],"x":[{"im\\u0061ge":{"format":"png"}}]}'
    assert parse_body(key_escaped, "e").images == 1


@pytest.mark.parametrize(
    ("block", "images", "documents"),
    [
        ({"type": "image", "source": {"type": "base64"}}, 1, 0),
        ({"type": "image_url", "image_url": {"url": "data:"}}, 1, 0),
        ({"type": "input_image", "image_url": "https://x"}, 1, 0),
        ({"type": "document", "source": {"type": "file", "file_id": "f"}}, 0, 1),
        ({"type": "file", "file": {"file_id": "f"}}, 0, 1),
        ({"type": "input_file", "file_id": "f"}, 0, 1),
        ({"type": "input_audio", "input_audio": {"data": "x"}}, 0, 1),
        ({"type": "container_upload", "file_id": "f"}, 0, 1),
        ({"image": {"format": "png", "source": {"bytes": "x"}}}, 1, 0),
        ({"document": {"format": "pdf", "name": "d", "source": {"bytes": "x"}}}, 0, 1),
        ({"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/k"}}}}, 0, 1),
        # Tool data and schemas are not content: a property named "image" is text.
        ({"json": {"type": "image", "document": {"x": 1}}}, 0, 0),
        ({"type": "tool_use", "id": "t", "name": "n", "input": {"type": "document"}}, 0, 0),
    ],
)
def test_media_blocks_of_every_spelling(block: dict[str, Any], images: int, documents: int) -> None:
    parsed = parse_body(dumps({"model": "m", "messages": [{"role": "user", "content": [block]}]}), "e")
    assert (parsed.images, parsed.documents) == (images, documents)


def test_tool_schemas_with_media_named_properties_add_no_media_bound() -> None:
    schema = {"type": "object", "properties": {"image": {"type": "string"}, "document": {"type": "string"}}}
    body = {
        "model": "m",
        "messages": [],
        "tools": [
            {"name": "t", "input_schema": schema},
            {"type": "function", "function": {"parameters": schema}},
        ],
        "toolConfig": {"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": schema}}}]},
    }
    parsed = parse_body(dumps(body), "e")
    assert (parsed.images, parsed.documents) == (0, 0)


def test_cache_markers_and_ttl_are_read_after_escapes_are_decoded() -> None:
    body = (
        b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"hi",'
        b'"cache_contr\\u006fl":{"type":"ephemeral","ttl":"\\u0031h"}}]}]}'
    )
    info = anthropic.parse_request("messages", body)
    assert info.cache_writes_possible and info.cache_1h


def test_prompt_bytes_is_the_canonical_length_and_escapes_only_shrink_it() -> None:
    text = "café ☕ naïve"
    ascii_escaped = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": text}]}, indent=2
    ).encode()
    info = openai.parse_request("chat.completions", ascii_escaped)
    assert info.prompt_bytes == len(openai.encode_body(info)) < len(ascii_escaped)
    assert text.encode() in openai.encode_body(info)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []


@given(extra=json_values, ascii_only=st.booleans())
def test_prompt_bytes_bounds_the_utf8_bytes_of_every_string(extra: Any, ascii_only: bool) -> None:
    # A token stands for at least one byte of the text it encodes, so this is
    # the property that makes prompt_bytes a bound on input tokens.
    obj = {"model": "m", "messages": [], "extra": extra}
    body = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    info = openai.parse_request("chat.completions", body)
    text_bytes = sum(len(s.encode("utf-8", "surrogatepass")) for s in _strings(obj))
    assert info.prompt_bytes >= text_bytes


# --- the canonical body is what is forwarded -------------------------------


def test_encode_body_is_the_compact_form_of_what_was_checked() -> None:
    raw = b'{ "model" : "m",\n "messages" : [ ],  "max_tokens" : 7 }'
    info = anthropic.parse_request("messages", raw)
    assert anthropic.encode_body(info) == b'{"model":"m","messages":[],"max_tokens":7}'
    anthropic.set_max_tokens(info, 900)
    assert anthropic.encode_body(info) == compact_json(info.body)
    assert json.loads(anthropic.encode_body(info))["max_tokens"] == 900


def test_encode_body_without_a_cached_form_encodes_the_body() -> None:
    info = RequestInfo("openai", "chat.completions", "m", False, 5, 10, False, False, {"model": "m", "n": 2})
    assert openai.encode_body(info) == b'{"model":"m","n":2}'


# --- nothing but ProtocolError comes out, whatever the bytes -----------------

junk_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "image",
            "document",
            "1h",
            "ephemeral",
            "web_search_20250305",
            "priority",
            "arn:aws:bedrock:us-east-1:1:prompt/P",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "model",
                    "messages",
                    "input",
                    "max_tokens",
                    "max_completion_tokens",
                    "max_output_tokens",
                    "n",
                    "best_of",
                    "stream",
                    "stream_options",
                    "inferenceConfig",
                    "maxTokens",
                    "type",
                    "tools",
                    "textGenerationConfig",
                    "maxTokenCount",
                    "max_gen_len",
                    "anthropic_version",
                    "cache_control",
                    "ttl",
                    "service_tier",
                    "performanceConfig",
                    "serviceTier",
                    "additionalModelRequestFields",
                    "previous_response_id",
                    "image",
                    "source",
                    "num_generations",
                    "toolConfig",
                    "systemTool",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=6,
        )
    ),
    max_leaves=40,
)


def _exercise(proto: ModuleType, route: str, body: bytes, model: str | None) -> None:
    try:
        info = proto.parse_request(route, body, model)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert isinstance(info, RequestInfo)
    assert info.choices >= 1 and info.prompt_bytes >= 0
    assert info.max_tokens is None or info.max_tokens >= 0
    proto.set_max_tokens(info, 77)
    proto.request_usage_in_stream(info)
    forwarded = proto.encode_body(info)
    # One encoder spells the whole body, however it was changed member by member.
    assert forwarded == canonical_dumps(info.body)
    assert parse_body(forwarded, "e").obj == info.body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), which=st.integers(0, len(EVERY_ROUTE) - 1))
def test_arbitrary_bytes_give_a_request_or_a_protocol_error(data: bytes, which: int) -> None:
    proto, route, model = EVERY_ROUTE[which]
    _exercise(proto, route, data, model)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    obj=junk_json, which=st.integers(0, len(EVERY_ROUTE) - 1), model=st.sampled_from([None, "m", "gpt-4o"])
)
def test_arbitrary_json_gives_a_request_or_a_protocol_error(obj: Any, which: int, model: str | None) -> None:
    proto, route, path_model = EVERY_ROUTE[which]
    if isinstance(obj, dict) and model is not None:
        obj = {"model": model, "messages": [], "input": "x", **obj}
    body = json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")
    _exercise(proto, route, body, path_model)


@pytest.mark.parametrize(("proto", "route", "model"), EVERY_ROUTE)
def test_every_route_survives_the_hostile_bodies(proto: ModuleType, route: str, model: str | None) -> None:
    for body in (
        _nested(100_000),
        b'{"model":"m","messages":[],"n":' + b"7" * 5000 + b"}",
        b'{"model":"m","messages":[],"x":NaN}',
        b'{"model":"m","model":"n","messages":[]}',
        b"\xff\xfe",
        b'{"model":"m","messages":[],"x":"\\udfff"}',
        b"",
    ):
        with pytest.raises(ProtocolError):
            proto.parse_request(route, body, model)
