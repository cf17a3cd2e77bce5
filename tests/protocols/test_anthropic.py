from __future__ import annotations

import anthropic as anthropic_sdk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfuse.protocols import anthropic
from tokenfuse.protocols.base import DOCUMENT_TOKEN_BOUND, IMAGE_TOKEN_BOUND, ProtocolError
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.usage import Usage

from .clients import anthropic_call
from .test_sse import split
from .wire import anthropic_stream, dumps

MSG = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]}
TEXTS = ["Hi", " there", ', "friend"', "\n", "ünïcödé", "."]
TEXT_BYTES = sum(len(t.encode()) for t in TEXTS)

START_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 12000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 1,
    "service_tier": "standard",
}
EXPECTED = Usage(input_uncached=25, cache_read=12000, cache_write=1000, cache_write_1h=2000, output=503)


# --- requests ---------------------------------------------------------------


def test_parse_messages_request() -> None:
    raw = dumps({**MSG, "stream": True})
    info = anthropic.parse_request("messages", raw)
    assert (info.protocol, info.route, info.model, info.stream, info.max_tokens) == (
        "anthropic",
        "messages",
        "claude-sonnet-4-5",
        True,
        1024,
    )
    assert info.prompt_bytes == len(raw)
    assert not info.cache_writes_possible and not info.cache_1h


def test_missing_max_tokens_is_none_so_the_gateway_can_default_it() -> None:
    body = {k: v for k, v in MSG.items() if k != "max_tokens"}
    info = anthropic.parse_request("messages", dumps(body))
    assert info.max_tokens is None
    anthropic.set_max_tokens(info, 4096)
    assert info.body["max_tokens"] == 4096 and info.max_tokens == 4096


def test_cache_markers_and_ttl() -> None:
    five = {**MSG, "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]}
    info = anthropic.parse_request("messages", dumps(five))
    assert info.cache_writes_possible and not info.cache_1h
    hour = {
        **MSG,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    }
    info = anthropic.parse_request("messages", dumps(hour))
    assert info.cache_writes_possible and info.cache_1h
    # Text that merely mentions the marker is not a marker.
    mention = {**MSG, "messages": [{"role": "user", "content": 'what does "cache_control": {} do?'}]}
    assert not anthropic.parse_request("messages", dumps(mention)).cache_writes_possible


def test_media_blocks_add_their_bounds() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
        {"type": "text", "text": "Describe both."},
    ]
    raw = dumps({**MSG, "messages": [{"role": "user", "content": content}]})
    info = anthropic.parse_request("messages", raw)
    assert info.prompt_bytes == len(raw) + IMAGE_TOKEN_BOUND + DOCUMENT_TOKEN_BOUND


def test_count_tokens_request() -> None:
    info = anthropic.parse_request("count_tokens", dumps({"model": "claude-haiku-4-5", "messages": []}))
    assert (info.max_tokens, info.stream) == (0, False)
    anthropic.set_max_tokens(info, 100)
    assert "max_tokens" not in info.body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\xc3\x28", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b'"text"', "got a JSON string"),
        (dumps({"max_tokens": 1, "messages": []}), "'model' is missing"),
        (dumps({"model": None, "messages": []}), "'model' is missing"),
        (dumps({"model": "", "messages": []}), "'model' must be a non-empty string"),
        (dumps({"model": "m", "messages": {}}), "'messages' must be an array, got object"),
        (
            dumps({"model": "m", "messages": [], "max_tokens": 1.5}),
            "'max_tokens' must be a non-negative integer",
        ),
        (dumps({"model": "m", "messages": [], "stream": 1}), "'stream' must be true or false"),
    ],
)
def test_bad_input_raises_a_clear_400(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        anthropic.parse_request("messages", body)
    assert (exc.value.status, exc.value.error_type) == (400, "invalid_request_error")
    assert fragment in exc.value.message


# --- non-stream usage -------------------------------------------------------


def test_usage_excludes_cache_and_splits_writes() -> None:
    body = dumps({"id": "msg_1", "type": "message", "usage": {**START_USAGE, "output_tokens": 503}})
    assert anthropic.usage_from_response("messages", body, {}) == EXPECTED


def test_usage_without_breakdown_is_all_five_minute() -> None:
    u = {
        "input_tokens": 3,
        "cache_creation_input_tokens": 700,
        "cache_read_input_tokens": 0,
        "output_tokens": 9,
    }
    got = anthropic.usage_from_response("messages", dumps({"type": "message", "usage": u}), {})
    assert got == Usage(input_uncached=3, cache_write=700, output=9)


def test_count_tokens_is_zero_cost_and_errors_have_no_usage() -> None:
    assert anthropic.usage_from_response("count_tokens", dumps({"input_tokens": 2095}), {}) == Usage()
    err = dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert anthropic.usage_from_response("messages", err, {}) is None
    assert anthropic.usage_from_response("count_tokens", err, {}) is None


# --- streams ----------------------------------------------------------------


def run(chunks: list[bytes], complete: bool = True) -> tuple[bytes, Usage, int]:
    meter = anthropic.StreamMeter(anthropic.parse_request("messages", dumps({**MSG, "stream": True})))
    out = b"".join(meter.feed(c) for c in chunks) + meter.finish()
    return out, meter.usage(complete), meter.text_bytes


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=15), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_stream_usage_for_any_chunking(cuts: list[int], eol: bytes) -> None:
    upstream = anthropic_stream(TEXTS, start_usage=START_USAGE, deltas=[{"output_tokens": 503}], eol=eol)
    out, usage, text = run(split(upstream, cuts))
    assert out == upstream
    assert usage == EXPECTED
    assert text == TEXT_BYTES


def test_message_delta_is_cumulative_not_summed() -> None:
    deltas = [{"output_tokens": 100}, {"output_tokens": 250}, {"output_tokens": 503}]
    _, usage, _ = run([anthropic_stream(TEXTS, start_usage=START_USAGE, deltas=deltas)])
    assert usage == EXPECTED


def test_message_delta_may_carry_input_and_cache_fields_latest_non_null_wins() -> None:
    start = {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    deltas = [
        {"output_tokens": 10, "input_tokens": 40, "cache_read_input_tokens": None},
        {
            "output_tokens": 20,
            "input_tokens": None,
            "cache_read_input_tokens": 900,
            "cache_creation_input_tokens": 60,
        },
    ]
    _, usage, _ = run([anthropic_stream(TEXTS, start_usage=start, deltas=deltas)])
    assert usage == Usage(input_uncached=40, cache_read=900, cache_write=60, output=20)


def test_cut_stream_keeps_input_figures_and_estimates_output() -> None:
    upstream = anthropic_stream(TEXTS, start_usage=START_USAGE, deltas=[])
    _, usage, _ = run([upstream], complete=False)
    assert usage == Usage(
        input_uncached=25,
        cache_read=12000,
        cache_write=1000,
        cache_write_1h=2000,
        output=tokens_from_bytes(TEXT_BYTES),
        estimated=True,
    )


def test_stream_cut_before_message_start_estimates_input_from_the_prompt() -> None:
    meter = anthropic.StreamMeter(anthropic.parse_request("messages", dumps(MSG)))
    meter.feed(b'event: message_start\ndata: {"type":"mess')
    usage = meter.usage(False)
    assert (
        usage.estimated and usage.input_uncached == tokens_from_bytes(len(dumps(MSG))) and usage.output == 0
    )


def test_events_without_event_lines_still_count() -> None:
    upstream = anthropic_stream(TEXTS, start_usage=START_USAGE, deltas=[{"output_tokens": 503}])
    bare = b"".join(line + b"\n" for line in upstream.split(b"\n") if not line.startswith(b"event:"))
    _, usage, text = run([bare])
    assert usage == EXPECTED and text == TEXT_BYTES


def test_thinking_and_tool_input_deltas_count_as_text() -> None:
    events = [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Let me see"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": 1'},
        },
    ]
    chunks = [b"event: content_block_delta\ndata: " + dumps(e) + b"\n\n" for e in events]
    _, _, text = run(chunks)
    assert text == len("Let me see") + len('{"a": 1')


# --- errors through the official SDK ---------------------------------------


def test_error_response_parses_in_the_sdk() -> None:
    err, calls = anthropic_call(
        *anthropic.error_response(403, "permission_error", "Key alice is killed.", retryable=False)
    )
    assert isinstance(err, anthropic_sdk.PermissionDeniedError)
    assert err.body == {
        "type": "error",
        "error": {"type": "permission_error", "message": "Key alice is killed."},
    }
    assert calls == 1


def test_non_retryable_429_is_not_retried_by_the_sdk() -> None:
    err, calls = anthropic_call(*anthropic.error_response(429, "rate_limit_error", "stop", retryable=False))
    assert isinstance(err, anthropic_sdk.RateLimitError) and calls == 1


# --- what the body does not bound -------------------------------------------


def test_max_tokens_of_zero_is_refused() -> None:
    with pytest.raises(ProtocolError) as exc:
        anthropic.parse_request("messages", dumps({**MSG, "max_tokens": 0}))
    assert (exc.value.status, exc.value.error_type) == (400, "invalid_request_error")
    assert "'max_tokens' must be at least 1" in exc.value.message


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "type='web_search_20250305'"),
        ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "type='web_fetch_20250910'"),
        ({"tools": [{"type": "code_execution_20250825", "name": "c"}]}, "type='code_execution_20250825'"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"container": "container_011"}, "container='container_011'"),
    ],
)
def test_server_tools_and_server_context_are_named(extra: dict[str, object], reason: str) -> None:
    info = anthropic.parse_request("messages", dumps({**MSG, **extra}))
    assert len(info.unbounded) == 1 and reason in info.unbounded[0], info.unbounded


def test_client_tools_are_bounded() -> None:
    tools = [
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    info = anthropic.parse_request("messages", dumps({**MSG, "tools": tools, "mcp_servers": []}))
    assert (info.unbounded, info.priced_options) == ((), ())


@pytest.mark.parametrize(
    ("extra", "priced"),
    [
        ({"service_tier": "auto"}, ()),
        ({"service_tier": "standard_only"}, ()),
        ({"speed": "fast"}, ("speed='fast' is billed at a multiple of standard rates",)),
        ({"inference_geo": "us"}, ("inference_geo='us' is billed above global rates on newer models",)),
        ({"inference_geo": "global"}, ()),
    ],
)
def test_priced_options_are_named(extra: dict[str, object], priced: tuple[str, ...]) -> None:
    assert anthropic.parse_request("messages", dumps({**MSG, **extra})).priced_options == priced


def test_count_tokens_is_free_whatever_it_names() -> None:
    body = {"model": "m", "messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]}
    info = anthropic.parse_request("count_tokens", dumps(body))
    assert info.unbounded == () and info.max_tokens == 0
