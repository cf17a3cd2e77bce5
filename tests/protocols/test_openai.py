from __future__ import annotations

import json
from collections.abc import Mapping

import openai as openai_sdk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfuse.protocols import openai
from tokenfuse.protocols.base import ProtocolError, RequestInfo
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.usage import Usage

from .clients import openai_call
from .test_sse import split
from .wire import CHAT_USAGE, RESPONSES_USAGE, chat_stream, dumps, responses_stream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
TEXTS = ["Hello", ", wörld", " — ", 'naïve "quotes"\n', "日本語", "!"]
TEXT_BYTES = sum(len(t.encode()) for t in TEXTS)


def info_for(body: Mapping[str, object], route: str = "chat.completions") -> RequestInfo:
    return openai.parse_request(route, dumps(body))


# --- requests ---------------------------------------------------------------


def test_parse_chat_request() -> None:
    raw = dumps({**CHAT, "stream": True, "max_tokens": 50})
    info = openai.parse_request("chat.completions", raw)
    assert (info.protocol, info.route, info.model, info.stream, info.max_tokens) == (
        "openai",
        "chat.completions",
        "gpt-4o-mini",
        True,
        50,
    )
    assert info.prompt_bytes == len(raw)
    assert not info.cache_writes_possible and not info.cache_1h
    assert info.wants_usage_chunk is False


@pytest.mark.parametrize(("mct", "mt"), [(70, 10), (10, 70), (0, None), (None, 1_000_000)])
def test_the_larger_output_limit_is_the_bound_and_both_are_rewritten(mct: int | None, mt: int | None) -> None:
    body = {**CHAT, "max_completion_tokens": mct, "max_tokens": mt}
    if 0 in (mct, mt):
        with pytest.raises(ProtocolError, match="must be at least 1"):
            info_for(body)
        return
    info = info_for(body)
    assert info.max_tokens == max(v for v in (mct, mt) if v is not None)
    openai.set_max_tokens(info, 4096)
    assert info.max_tokens == 4096
    for key in ("max_completion_tokens", "max_tokens"):
        assert info.body[key] == (4096 if body[key] is not None else None)


def test_max_completion_tokens_0_beside_a_huge_max_tokens_is_refused() -> None:
    with pytest.raises(ProtocolError) as exc:
        info_for({**CHAT, "max_completion_tokens": 0, "max_tokens": 1_000_000})
    assert exc.value.status == 400
    assert "'max_completion_tokens' must be at least 1" in exc.value.message


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("chat.completions", {**CHAT, "max_tokens": 0}),
        ("chat.completions", {**CHAT, "max_completion_tokens": 0}),
        ("responses", {"model": "o4-mini", "input": "hi", "max_output_tokens": 0}),
        ("responses", {"model": "o4-mini", "input": "hi", "max_output_tokens": -1}),
    ],
)
def test_output_limits_of_zero_or_less_are_refused(route: str, body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as exc:
        info_for(body, route)
    assert (exc.value.status, exc.value.error_type) == (400, "invalid_request_error")


def test_responses_reads_and_rewrites_chat_limit_names_an_upstream_may_honour() -> None:
    info = info_for({"model": "m", "input": "hi", "max_output_tokens": 10, "max_tokens": 5000}, "responses")
    assert info.max_tokens == 5000
    openai.set_max_tokens(info, 100)
    assert (info.body["max_output_tokens"], info.body["max_tokens"]) == (100, 100)


@pytest.mark.parametrize(("extra", "choices"), [({}, 1), ({"n": None}, 1), ({"n": 8}, 8), ({"n": 128}, 128)])
def test_n_is_the_number_of_choices(extra: dict[str, object], choices: int) -> None:
    assert info_for({**CHAT, **extra}).choices == choices


def test_best_of_counts_as_choices_too() -> None:
    assert info_for({**CHAT, "n": 2, "best_of": 5}).choices == 5


@pytest.mark.parametrize(
    ("n", "fragment"),
    [
        (0, "between 1 and 128"),
        (129, "between 1 and 128"),
        (-1, "non-negative"),
        ("2", "non-negative"),
        (2.0, "non-negative"),
    ],
)
def test_bad_n_is_refused(n: object, fragment: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        info_for({**CHAT, "n": n})
    assert exc.value.status == 400 and fragment in exc.value.message and "'n'" in exc.value.message


@pytest.mark.parametrize(
    ("route", "extra", "reason"),
    [
        ("responses", {"previous_response_id": "resp_123"}, "previous_response_id='resp_123'"),
        ("responses", {"conversation": "conv_9"}, "conversation='conv_9'"),
        ("responses", {"prompt": {"id": "pmpt_1"}}, "prompt={'id': 'pmpt_1'}"),
        ("responses", {"background": True}, "background=true"),
        ("responses", {"tools": [{"type": "web_search_preview"}]}, "tools type='web_search_preview'"),
        ("responses", {"tools": [{"type": "web_search"}]}, "tools type='web_search'"),
        ("responses", {"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "type='file_search'"),
        ("responses", {"tools": [{"type": "code_interpreter"}]}, "type='code_interpreter'"),
        ("responses", {"tools": [{"type": "image_generation"}]}, "type='image_generation'"),
        ("responses", {"tools": [{"type": "mcp", "server_url": "https://x"}]}, "type='mcp'"),
        ("responses", {"tools": [{"type": "computer_use_preview"}]}, "type='computer_use_preview'"),
        ("responses", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference id='msg_1'"),
        ("chat.completions", {"web_search_options": {}}, "web_search_options"),
        ("chat.completions", {"model": "gpt-4o-search-preview"}, "searches the web"),
        ("chat.completions", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ],
)
def test_what_the_body_does_not_bound_is_named(route: str, extra: dict[str, object], reason: str) -> None:
    base = CHAT if route == "chat.completions" else {"model": "gpt-4.1", "input": "hi"}
    info = info_for({**base, **extra}, route)
    assert len(info.unbounded) == 1 and reason in info.unbounded[0], info.unbounded
    assert info.priced_options == ()


def test_plain_requests_and_function_tools_are_bounded() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    for route, body in [
        ("chat.completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("responses", {"model": "gpt-4.1", "input": "hi", "tools": tools, "previous_response_id": None}),
        ("embeddings", {"model": "text-embedding-3-small", "input": "x", "service_tier": "priority"}),
    ]:
        info = info_for(body, route)
        assert (info.unbounded, info.priced_options) == ((), ())


@pytest.mark.parametrize(
    ("tier", "priced"),
    [
        ("priority", True),
        ("scale", True),
        ("fast", True),
        ("flex", False),
        ("auto", False),
        ("default", False),
        (None, False),
    ],
)
def test_service_tiers_dearer_than_standard_are_named(tier: str | None, priced: bool) -> None:
    for route, base in [("chat.completions", CHAT), ("responses", {"model": "gpt-4.1", "input": "hi"})]:
        info = info_for({**base, "service_tier": tier}, route)
        assert bool(info.priced_options) is priced
        if priced:
            assert info.priced_options == (f"service_tier='{tier}' is billed above standard rates",)


def test_audio_output_is_a_priced_option() -> None:
    info = info_for({**CHAT, "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}})
    assert info.priced_options and "audio" in info.priced_options[0]


def test_responses_and_embeddings_limits() -> None:
    r = info_for({"model": "o4-mini", "input": "hi", "max_output_tokens": 300, "stream": True}, "responses")
    assert (r.max_tokens, r.stream, r.wants_usage_chunk) == (300, True, True)
    e = info_for({"model": "text-embedding-3-small", "input": ["a", "b"]}, "embeddings")
    assert (e.max_tokens, e.stream) == (0, False)


def test_images_add_a_per_image_bound() -> None:
    body = {
        **CHAT,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            }
        ],
    }
    raw = dumps(body)
    assert openai.parse_request("chat.completions", raw).prompt_bytes == len(raw) + openai_base_image_bound()


def openai_base_image_bound() -> int:
    from tokenfuse.protocols.base import IMAGE_TOKEN_BOUND

    return IMAGE_TOKEN_BOUND


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"model": "gpt-4o", ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got a JSON array"),
        (dumps({"messages": []}), "'model' is missing"),
        (dumps({"model": 4, "messages": []}), "'model' must be a non-empty string, got number"),
        (dumps({"model": "m", "messages": "hi"}), "'messages' must be an array"),
        (dumps({"model": "m"}), "'messages' is missing"),
        (
            dumps({"model": "m", "messages": [], "max_tokens": "100"}),
            "'max_tokens' must be a non-negative integer",
        ),
        (
            dumps({"model": "m", "messages": [], "max_tokens": True}),
            "'max_tokens' must be a non-negative integer",
        ),
        (dumps({"model": "m", "messages": [], "max_completion_tokens": -1}), "'max_completion_tokens'"),
        (dumps({"model": "m", "messages": [], "stream": "yes"}), "'stream' must be true or false"),
        (dumps({"model": "m", "messages": [], "stream_options": 3}), "'stream_options' must be an object"),
    ],
)
def test_bad_chat_input_raises_a_clear_400(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        openai.parse_request("chat.completions", body)
    assert exc.value.status == 400
    assert exc.value.error_type == "invalid_request_error"
    assert fragment in exc.value.message


def test_bad_responses_and_embeddings_input() -> None:
    with pytest.raises(ProtocolError, match="'input' must be a string or an array"):
        openai.parse_request("responses", dumps({"model": "m", "input": 5}))
    with pytest.raises(ProtocolError, match="'max_output_tokens'"):
        openai.parse_request("responses", dumps({"model": "m", "input": "x", "max_output_tokens": 1.5}))
    with pytest.raises(ProtocolError, match="'input' is missing"):
        openai.parse_request("embeddings", dumps({"model": "m"}))


@pytest.mark.parametrize(
    ("model", "body_extra", "field"),
    [
        ("gpt-4o-mini", {}, "max_tokens"),
        ("o3-mini", {}, "max_completion_tokens"),
        ("gpt-5-mini", {}, "max_completion_tokens"),
        ("gpt-4o", {"max_completion_tokens": 9}, "max_completion_tokens"),
        ("o1", {"max_tokens": 9}, "max_tokens"),
    ],
)
def test_set_max_tokens_keeps_the_clients_field(model: str, body_extra: dict[str, int], field: str) -> None:
    info = info_for({**CHAT, "model": model, **body_extra})
    openai.set_max_tokens(info, 512)
    assert info.body[field] == 512 and info.max_tokens == 512
    other = {"max_tokens", "max_completion_tokens"} - {field}
    assert not other & info.body.keys()


def test_set_max_tokens_responses_and_embeddings() -> None:
    r = info_for({"model": "gpt-5", "input": "x"}, "responses")
    openai.set_max_tokens(r, 64)
    assert r.body["max_output_tokens"] == 64 and r.max_tokens == 64
    e = info_for({"model": "text-embedding-3-small", "input": "x"}, "embeddings")
    openai.set_max_tokens(e, 64)
    assert "max_tokens" not in e.body and e.max_tokens == 0


def test_request_usage_in_stream() -> None:
    info = info_for({**CHAT, "stream": True})
    openai.request_usage_in_stream(info)
    assert info.body["stream_options"] == {"include_usage": True} and info.wants_usage_chunk is False
    assert json.loads(openai.encode_body(info)) == info.body
    keep = info_for({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    openai.request_usage_in_stream(keep)
    assert keep.wants_usage_chunk is True
    flip = info_for({**CHAT, "stream": True, "stream_options": {"include_usage": False}})
    openai.request_usage_in_stream(flip)
    assert flip.body["stream_options"] == {"include_usage": True} and flip.wants_usage_chunk is False
    plain = info_for(CHAT)
    openai.request_usage_in_stream(plain)
    assert "stream_options" not in plain.body


def test_encode_body_is_compact_utf8() -> None:
    info = info_for({**CHAT, "messages": [{"role": "user", "content": "héllo"}]})
    assert (
        openai.encode_body(info) == json.dumps(info.body, separators=(",", ":"), ensure_ascii=False).encode()
    )


# --- non-stream usage -------------------------------------------------------


def test_chat_usage_subtracts_cached_from_prompt() -> None:
    body = dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": CHAT_USAGE})
    assert openai.usage_from_response("chat.completions", body, {}) == Usage(
        input_uncached=2006 - 1920, cache_read=1920, output=300
    )


def test_chat_usage_without_details() -> None:
    body = dumps({"usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": None}})
    assert openai.usage_from_response("chat.completions", body, {}) == Usage(input_uncached=10, output=3)


def test_responses_and_embeddings_usage() -> None:
    body = dumps({"id": "resp_1", "object": "response", "usage": RESPONSES_USAGE})
    assert openai.usage_from_response("responses", body, {}) == Usage(
        input_uncached=904, cache_read=4096, output=900
    )
    emb = dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    assert openai.usage_from_response("embeddings", emb, {}) == Usage(input_uncached=8)


def test_error_and_garbage_bodies_have_no_usage() -> None:
    err = dumps({"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}})
    assert openai.usage_from_response("chat.completions", err, {}) is None
    assert openai.usage_from_response("chat.completions", b"<html>502</html>", {}) is None


# --- streams ----------------------------------------------------------------


def run(info: RequestInfo, chunks: list[bytes], complete: bool = True) -> tuple[bytes, Usage, int]:
    meter = openai.StreamMeter(info)
    out = b"".join(meter.feed(c) for c in chunks) + meter.finish()
    return out, meter.usage(complete), meter.text_bytes


def stream_info(include_usage: bool | None) -> RequestInfo:
    body: dict[str, object] = {**CHAT, "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    info = info_for(body)
    openai.request_usage_in_stream(info)
    return info


EXPECTED_CHAT = Usage(input_uncached=86, cache_read=1920, output=300)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=15))
def test_client_asked_for_usage_passes_through_unchanged(cuts: list[int]) -> None:
    upstream = chat_stream(TEXTS, include_usage=True)
    out, usage, text = run(stream_info(True), split(upstream, cuts))
    assert out == upstream
    assert usage == EXPECTED_CHAT
    assert text == TEXT_BYTES


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=15))
def test_strip_case_yields_exactly_the_no_gateway_stream(cuts: list[int]) -> None:
    upstream = chat_stream(TEXTS, include_usage=True)
    without_gateway = chat_stream(TEXTS, include_usage=False)
    out, usage, text = run(stream_info(None), split(upstream, cuts))
    assert out == without_gateway
    assert usage == EXPECTED_CHAT
    assert text == TEXT_BYTES


def test_strip_handles_spaced_json_and_crlf() -> None:
    def spaced(obj: object) -> bytes:
        return json.dumps(obj).encode()

    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None}
    plain = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    final = {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    upstream = b"data: " + spaced(chunk) + b"\r\n\r\ndata: " + spaced(final) + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    expected = b"data: " + spaced(plain) + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    out, usage, _ = run(stream_info(None), [upstream])
    assert out == expected
    assert usage == Usage(input_uncached=5, output=1)


def test_strip_case_holds_back_only_the_incomplete_trailing_event() -> None:
    meter = openai.StreamMeter(stream_info(None))
    first = b'data: {"id":"c","choices":[{"delta":{"content":"a"}}]}\n\n'
    assert meter.feed(first + b'data: {"id":"c"') == first
    assert meter.feed(b',"choices":[]}\n\n') == b'data: {"id":"c","choices":[]}\n\n'


def test_truncated_stream_is_estimated_from_text_and_prompt() -> None:
    upstream = chat_stream(TEXTS, include_usage=True)
    cut = upstream[: upstream.index(b'"choices":[]')]
    info = stream_info(None)
    out, usage, _ = run(info, [cut], complete=False)
    assert usage.estimated
    assert usage.output == tokens_from_bytes(TEXT_BYTES)
    assert usage.input_uncached == tokens_from_bytes(info.prompt_bytes)
    # The incomplete trailing event is still forwarded at the end.
    assert out.endswith(cut[cut.rindex(b"data: ") :])


def test_stream_without_any_usage_is_estimated_even_when_complete() -> None:
    upstream = chat_stream(TEXTS, include_usage=False)
    _, usage, _ = run(stream_info(True), [upstream], complete=True)
    assert usage.estimated and usage.output == tokens_from_bytes(TEXT_BYTES)


def test_tool_call_arguments_count_as_text() -> None:
    args = '{"city": "Paris"}'
    ev = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": args},
                        }
                    ]
                },
            }
        ],
    }
    _, _, text = run(stream_info(True), [b"data: " + dumps(ev) + b"\n\n"])
    assert text == len(args.encode())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12))
def test_responses_stream_usage_from_completed_event(cuts: list[int]) -> None:
    info = info_for({"model": "gpt-5", "input": "hi", "stream": True}, "responses")
    upstream = responses_stream(TEXTS)
    out, usage, text = run(info, split(upstream, cuts))
    assert out == upstream
    assert usage == Usage(input_uncached=904, cache_read=4096, output=900)
    assert text == TEXT_BYTES


def test_responses_stream_cut_before_completed_is_estimated() -> None:
    info = info_for({"model": "gpt-5", "input": "hi", "stream": True}, "responses")
    _, usage, _ = run(info, [responses_stream(TEXTS, complete=False)], complete=False)
    assert usage.estimated and usage.output == tokens_from_bytes(TEXT_BYTES)


# --- errors through the official SDK ---------------------------------------


def test_error_response_parses_in_the_sdk_and_is_not_retried() -> None:
    resp = openai.error_response(
        429,
        "insufficient_quota",
        "Budget alice-monthly is spent.",
        retryable=False,
        code="insufficient_quota",
    )
    err, calls = openai_call(*resp)
    assert isinstance(err, openai_sdk.RateLimitError)
    assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert "Budget alice-monthly is spent." in err.message
    assert calls == 1


def test_bad_request_error_in_the_sdk() -> None:
    err, calls = openai_call(
        *openai.error_response(400, "invalid_request_error", "Field 'model' is missing.")
    )
    assert isinstance(err, openai_sdk.BadRequestError) and calls == 1
    assert err.body == {
        "message": "Field 'model' is missing.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_lone_surrogate_is_refused_since_it_has_no_utf8_form_to_forward() -> None:
    with pytest.raises(ProtocolError, match="unpaired surrogate"):
        openai.parse_request(
            "chat.completions", b'{"model":"m","messages":[{"role":"user","content":"a\\ud83d"}]}'
        )


def test_finish_twice_does_not_repeat_held_bytes() -> None:
    meter = openai.StreamMeter(stream_info(None))
    assert meter.feed(b'data: {"id":"c"') == b""
    assert meter.finish() == b'data: {"id":"c"'
    assert meter.finish() == b""


_tricky = st.text(
    alphabet=st.sampled_from(["a", "ü", "日", '"', "\\", "\n", ":", ",", "{", "}", "\U0001f600", " "]),
    max_size=12,
) | st.sampled_from(['"usage":null', ',"usage":null}', '{"choices":[]}', "data: [DONE]\n\n"])


@settings(max_examples=80, deadline=None)
@given(st.lists(_tricky, min_size=1, max_size=6), st.lists(st.integers(min_value=0), max_size=10))
def test_strip_case_is_exact_for_any_text(texts: list[str], cuts: list[int]) -> None:
    upstream = chat_stream(texts, include_usage=True)
    out, usage, text = run(stream_info(None), split(upstream, cuts))
    assert out == chat_stream(texts, include_usage=False)
    assert usage == EXPECTED_CHAT
    assert text == sum(len(t.encode()) for t in texts)
