"""The stream meters' fast paths against the meters they replaced.

`reference_meters.py` holds the meters as they were before issue 14 (a general
SSE parser, botocore's event-stream decoder, a regex search per text key). For
real and hostile streams split anywhere, the meters of tokenfuse.protocols must
relay the same bytes after every chunk, hold the same text counts after every
chunk (the gateway cuts an overrunning stream on them) and report the same
usage, complete or not.
"""

from __future__ import annotations

import json
import struct
from binascii import crc32
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfuse.protocols import anthropic, bedrock, openai
from tokenfuse.protocols.base import RequestInfo, TextScanner, string_values_bytes, text_keys
from tokenfuse.protocols.eventstream import EventStreamDecoder, encode_message
from tokenfuse.protocols.sse import SSEEvent, SSEParser

from . import reference_meters as ref
from .test_sse import split
from .wire import (
    CHAT_USAGE,
    RESPONSES_USAGE,
    anthropic_stream,
    chat_stream,
    converse_stream,
    dumps,
    invoke_chunk,
    invoke_stream_anthropic,
    responses_stream,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the requests each meter serves ------------------------------------------------

_MESSAGES = [{"role": "user", "content": "Hi"}]


def _chat(include_usage: bool | None) -> RequestInfo:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": _MESSAGES, "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    info = openai.parse_request("chat.completions", dumps(body))
    openai.request_usage_in_stream(info)
    return info


def _responses() -> RequestInfo:
    return openai.parse_request("responses", dumps({"model": "gpt-4o-mini", "input": "Hi", "stream": True}))


def _messages() -> RequestInfo:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": _MESSAGES, "stream": True}
    return anthropic.parse_request("messages", dumps(body))


def _bedrock(route: str) -> RequestInfo:
    if route == "converse_stream":
        body = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    else:
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": _MESSAGES}
    return bedrock.parse_request(route, dumps(body), "anthropic.claude-sonnet-4-5")


# (name, new meter, reference meter, request)
SSE_METERS: list[tuple[str, Callable[[RequestInfo], Any], Callable[[RequestInfo], Any], RequestInfo]] = [
    ("chat, usage asked for by the gateway", openai.StreamMeter, ref.OpenAIStreamMeter, _chat(None)),
    ("chat, usage asked for by the client", openai.StreamMeter, ref.OpenAIStreamMeter, _chat(True)),
    ("responses", openai.StreamMeter, ref.OpenAIStreamMeter, _responses()),
    ("anthropic messages", anthropic.StreamMeter, ref.AnthropicStreamMeter, _messages()),
]
assert not SSE_METERS[0][3].wants_usage_chunk and SSE_METERS[1][3].wants_usage_chunk


def trace(meter: Any, chunks: list[bytes]) -> list[Any]:
    """Everything the gateway sees of a meter, chunk by chunk."""
    out: list[Any] = []
    for chunk in chunks:
        try:
            relayed = meter.feed(chunk)
        except Exception as exc:  # the reference may raise: so must the new meter, alike
            out.append(("raised", type(exc).__name__, str(exc)))
            return out
        out.append((relayed, meter.text_bytes, meter.text_events, getattr(meter, "broken", None)))
    out.append((meter.finish(), meter.text_bytes, meter.text_events))
    out.append((meter.usage(True), meter.usage(False)))
    return out


def assert_same_sse(data: bytes, cuts: list[int]) -> None:
    chunks = split(data, cuts)
    for name, new, old, info in SSE_METERS:
        assert trace(new(info), chunks) == trace(old(info), chunks), name
        # One chunk per event, as most upstreams send them.
        per_event = [e + b"\n\n" for e in data.split(b"\n\n")]
        per_event[-1] = per_event[-1][:-2]
        assert trace(new(info), per_event) == trace(old(info), per_event), name


# --- SSE payloads: real shapes and hostile ones -------------------------------------

_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ['"', "\\", '\\"', "usage", '"usage":null', ',"usage":null}', "\n", "data: x\n\n", "é日", ""]
    ),
)
_usage = st.sampled_from([CHAT_USAGE, RESPONSES_USAGE, {"input_tokens": 3, "output_tokens": 4}, {}, None, 7])


def _chat_chunk(draw: Any) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["content", "role", "tool", "reasoning", "refusal", "finish", "usage", "odd"])
    )
    delta: dict[str, Any] = {}
    if kind == "content":
        delta = {"content": draw(_text)}
    elif kind == "role":
        delta = {"role": "assistant", "content": "", "refusal": None}
    elif kind == "tool":
        delta = {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": draw(_text)}}]}
    elif kind == "reasoning":
        delta = {draw(st.sampled_from(["reasoning_content", "reasoning"])): draw(_text)}
    elif kind == "refusal":
        delta = {"refusal": draw(_text)}
    elif kind == "odd":
        # "usage" where it is not the top-level member, or spelled as a value.
        delta = {"content": draw(_text), draw(st.sampled_from(["usage", "x"])): draw(_usage | _text)}
    obj: dict[str, Any] = {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [] if kind == "usage" else [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    where = draw(st.sampled_from(["end", "none", "front", "before-obfuscation"]))
    usage = draw(_usage) if kind == "usage" else None
    if where == "front":
        obj = {"usage": usage, **obj}
    elif where != "none" or kind == "usage":
        obj["usage"] = usage
    if where == "before-obfuscation":
        obj["obfuscation"] = draw(st.sampled_from(["Zk3", "a\\u0022b", ""]))
    if draw(st.integers(0, 5)) == 0:
        obj["later"] = {"usage": draw(_usage)}  # a second "usage", after the member
    return obj


def _responses_event(draw: Any) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["response.output_text.delta", "response.created", "response.completed", "other"])
    )
    if kind == "response.output_text.delta":
        return {
            "type": kind,
            "sequence_number": draw(st.integers(0, 999)),
            "item_id": "msg_1",
            "delta": draw(_text),
        }
    response = {
        "id": "resp_1",
        "status": "completed",
        "usage": draw(_usage) if kind != "response.created" else None,
    }
    return {"type": kind, "sequence_number": 1, "response": response, "delta": draw(_text | st.none())}


def _anthropic_event(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["content_block_delta", "message_start", "message_delta", "ping", "other"]))
    if kind == "content_block_delta":
        key = draw(st.sampled_from(["text", "thinking", "partial_json"]))
        return {"type": kind, "index": 0, "delta": {"type": "text_delta", key: draw(_text)}}
    if kind == "message_start":
        return {"type": kind, "message": {"id": "msg_1", "usage": draw(_usage)}}
    if kind == "message_delta":
        return {"type": kind, "delta": {"stop_reason": "end_turn"}, "usage": draw(_usage)}
    return {"type": kind, "text": draw(_text)}


@st.composite
def _payload(draw: Any) -> tuple[bytes | None, bytes]:
    """(the `event:` name or None, the data) of one event."""
    kind = draw(st.sampled_from(["chat", "chat", "responses", "anthropic", "raw"]))
    if kind == "raw":
        data = draw(
            st.sampled_from([b"[DONE]", b"", b"{", b'{"usage":', b'{"content":"ab', b"a\rb", b"\r", b"\r\n"])
            | st.binary(max_size=8)
        )
        return draw(st.none() | st.just(b"x")), data
    obj = {"chat": _chat_chunk, "responses": _responses_event, "anthropic": _anthropic_event}[kind](draw)
    compact = draw(st.booleans())
    text = json.dumps(obj, separators=(",", ":") if compact else None, ensure_ascii=draw(st.booleans()))
    name = None
    if kind != "chat" and draw(st.booleans()):
        name = obj["type"].encode()
    elif draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from([b"message_start", b"content_block_delta", b" spaced", b""]))
    return name, text.encode()


@st.composite
def sse_stream(draw: Any) -> bytes:
    """Events framed the common way, or with any of what SSE also allows."""
    eol = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]))
    odd = draw(st.booleans())
    out = []
    for name, data in draw(st.lists(_payload(), max_size=8)):
        lines = []
        if odd and draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from([b": ping", b"id: 7", b"retry: 10", b":"])))
        if name is not None:
            lines.append(b"event:" + draw(st.sampled_from([b" ", b""])) + name)
        space = draw(st.sampled_from([b" ", b" ", b"", b"  "])) if odd else b" "
        if odd and len(data) > 1 and draw(st.integers(0, 4)) == 0:
            cut = draw(st.integers(1, len(data) - 1))  # a multi-line `data:`
            lines += [b"data:" + space + data[:cut], b"data:" + data[cut:]]
        else:
            lines.append(b"data:" + space + data)
        if odd and draw(st.integers(0, 4)) == 0:
            # A line after the data line, such as a field whose name ends in "data".
            lines.append(draw(st.sampled_from([b"Qdata: 1", b"data", b"event", b"xevent: y", b"data:\r"])))
        # Mixed line endings: the blank line may end otherwise than the lines.
        event = eol.join(lines) + eol + (draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) if odd else eol)
        if odd and draw(st.integers(0, 5)) == 0:
            event += eol  # an empty event
        out.append(event)
    tail = draw(st.sampled_from([b"", b"", b'data: {"content":"unfinished', b"data: x\n", b"\r", b"\n"]))
    return b"".join(out) + tail


_cuts = st.lists(st.integers(min_value=0), max_size=10)


@SETTINGS
@given(sse_stream(), _cuts)
def test_sse_meters_match_the_reference_on_any_stream(data: bytes, cuts: list[int]) -> None:
    assert_same_sse(data, cuts)


@SETTINGS
@given(
    sse_stream(),
    _cuts,
    st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=3)), max_size=4),
)
def test_sse_meters_match_the_reference_on_damaged_streams(
    data: bytes, cuts: list[int], damage: list[tuple[int, bytes]]
) -> None:
    for at, junk in damage:
        at %= len(data) + 1
        data = data[:at] + junk + data[at:]
    assert_same_sse(data, cuts)


_texts = st.lists(st.text(max_size=10), min_size=1, max_size=12)


@SETTINGS
@given(_texts, _cuts)
def test_real_streams_match_the_reference(texts: list[str], cuts: list[int]) -> None:
    start_usage = {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
    for data in (
        chat_stream(texts, include_usage=True),
        chat_stream(texts, include_usage=False),
        responses_stream(texts),
        responses_stream(texts, complete=False),
        anthropic_stream(texts, start_usage=start_usage, deltas=[{"output_tokens": 9}]),
        anthropic_stream(texts, start_usage=start_usage, deltas=[], eol=b"\r\n"),
    ):
        assert_same_sse(data, cuts)


_CHUNK = b'{"id":"c","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}],"usage":null%s}'
HOSTILE_SSE = [
    # A second "usage" after the null member, the one that counts.
    b"data: " + _CHUNK % (b"a", b',"later":{"usage":{"prompt_tokens":5}}') + b"\n\n",
    b'data: {"choices":[],"usage":null,"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
    # "usage" as the text, and as a key after it in a broken body.
    b"data: "
    + _CHUNK % (b"usage", b"")
    + b"\n\n"
    + b'data: {"choices":[{"delta":{"content":"usage":{"x":1}}}]}\n\n',
    # Escapes in the text, and the compact member followed by another member.
    b"data: " + _CHUNK % (b'a\\"b\\\\\\n\\u00e9', b',"obfuscation":"Zk3"') + b"\n\n",
    # Line endings: mixed, \r inside a line, lone \r, and \r\n split between chunks.
    b"data: x\r\n\ndata: " + _CHUNK % (b"b", b"") + b"\r\n\r\n",
    b'data: {"content":"a\rb"}\n\n' + b"data: " + _CHUNK % (b"c", b"") + b"\r\r",
    # A field whose name ends in "data", a data line without a space, an empty event.
    b"data: " + _CHUNK % (b"d", b"") + b"\nQdata: " + _CHUNK % (b"e", b"") + b"\n\n",
    b"data:" + _CHUNK % (b"f", b"") + b"\n\n\n\ndata:  " + _CHUNK % (b"g", b"") + b"\n\n",
    # The usage-only chunk, spaced, and with the gateway's null member ahead of it.
    b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\ndata: [DONE]\n\n',
    b'event: usage\ndata: {"choices":[],"usage":{"prompt_tokens":7}}\n\n',
    b'event: x,"usage":null}\ndata: {"a":1}\n\n',
    # Anthropic, with and without `event:` lines, and Responses.
    b'event:message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":4}}}\n\n'
    b'data: {"type":"content_block_delta","delta":{"text":"hi \\"x\\""}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed","response":{"usage": {"input_tokens":3}}}\n\n',
    b'data: {"type":"response.created","response":{"usage": null}, "delta":"ab"}\n\n',
]


def test_hostile_streams_split_everywhere_match_the_reference() -> None:
    for data in HOSTILE_SSE:
        for cut in range(len(data) + 1):
            assert_same_sse(data, [cut])
        assert_same_sse(data, list(range(len(data))))  # byte by byte


def test_a_blank_line_across_two_chunks_takes_the_fast_path() -> None:
    parser = SSEParser()
    assert parser.feed_simple(b"data: a\n") is None
    parser.feed(b"data: a\n")
    simple = parser.feed_simple(b"\ndata: b")
    assert simple is not None and simple[1] == [(None, 6, 7)] and parser.pending == b"data: b"


def test_the_common_shapes_take_the_fast_path() -> None:
    """Not a behaviour, but the point of the change: plain streams never reach
    the general parser."""
    data = chat_stream(["Hello", ' "x" ', "\\n"], include_usage=True)
    data += anthropic_stream(["a"], start_usage={"input_tokens": 1}, deltas=[{"output_tokens": 1}])
    parser = SSEParser(keep_raw=True)
    for i in range(0, len(data), 7):  # split mid-event too
        if parser.feed_simple(data[i : i + 7]) is None:
            assert b"\n\n" not in parser.pending + data[i : i + 7]
            parser.feed(data[i : i + 7])


@SETTINGS
@given(sse_stream(), _cuts)
def test_feed_simple_gives_the_events_feed_gives(data: bytes, cuts: list[int]) -> None:
    reference = ref.SSEParser(keep_raw=True)
    parser = SSEParser(keep_raw=True)
    for chunk in split(data, cuts):
        expected = [(e.event, e.data, e.raw) for e in reference.feed(chunk)]
        simple = parser.feed_simple(chunk)
        if simple is None:
            got = [(e.event, e.data, e.raw) for e in parser.feed(chunk)]
        else:
            buf, events = simple
            got, begin = [], 0
            for name, start, end in events:
                got.append((name, buf[start:end], buf[begin : end + 2]))
                begin = end + 2
        assert got == expected
        assert parser.pending == reference.pending
    assert [(e.event, e.data) for e in parser.finish()] == [(e.event, e.data) for e in reference.finish()]
    assert parser.pending == reference.pending
    assert isinstance(SSEEvent(None, None, b""), SSEEvent)


# --- text counting ------------------------------------------------------------

_KEYS = (b"content", b"reasoning_content", b"reasoning", b"refusal", b"arguments")
_atoms = st.sampled_from(
    [
        b'"',
        b"\\",
        b"content",
        b"reasoning",
        b"_content",
        b":",
        b" ",
        b"\n",
        b"a",
        b"\xc3\xa9",
        b"\\u00e9",
        b"\\ud83d\\ude00",
        b"\\ud800",
        b"{",
        b"}",
        b",",
        b'"usage"',
        b"usage",
    ]
)
_json_ish = st.lists(_atoms, max_size=40).map(b"".join)


@SETTINGS
@given(st.lists(st.tuples(_json_ish, _json_ish, st.integers(0, 50), st.integers(0, 50)), max_size=8))
def test_text_scanner_counts_as_string_values_bytes_did(events: list[tuple[bytes, bytes, int, int]]) -> None:
    # Events that share a prefix, as a stream's do, so that the remembered prefix is used.
    scanners = [TextScanner(text_keys(_KEYS), b'"usage"'), TextScanner(text_keys(_KEYS), remember=False)]
    for head, rest, a, b in events:
        data = b'{"choices":[{"delta":{"content":"' + head + rest
        start, end = min(a, len(data)), min(a + b, len(data))
        for scanner in scanners:
            assert scanner.count(data, start, end) == ref.string_values_bytes(data[start:end], _KEYS)
        first = data.find(b'"usage"', start, end)
        assert first < 0 or first >= scanners[0].clean >= start
        assert string_values_bytes(data, _KEYS, start, end) == ref.string_values_bytes(data[start:end], _KEYS)


def test_text_scanner_reads_escapes_and_stops_at_an_unclosed_string() -> None:
    scanner = TextScanner(text_keys((b"text",)))
    for data, expected in [
        (b'{"text":"a\\"b","text" : "\\u00e9"}', 3 + 2),
        (b'{"text":"ab\\\\","x":"text","text":"c', 3),
        (b'{"text":"abc', 0),
        (b'{"text":"' + b"x" * 100_000, 0),
    ]:
        assert scanner.count(data, 0, len(data)) == expected == ref.string_values_bytes(data, (b"text",))


# --- Bedrock event streams ----------------------------------------------------------


def _message(headers: bytes, payload: bytes, total: int | None = None, good_crc: bool = True) -> bytes:
    total = 16 + len(headers) + len(payload) if total is None else total
    prelude = struct.pack("!II", total, len(headers))
    prelude += struct.pack("!I", crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack("!I", crc32(body) if good_crc else crc32(body) ^ 1)


def _header(name: bytes, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name + bytes([kind]) + value


_string = st.sampled_from([b"event", b"exception", b"chunk", b"contentBlockDelta", b"metadata", b"\xff"])
_header_block = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([b":message-type", b":event-type", b":content-type", b"x"]), _string).map(
            lambda nv: _header(nv[0], 7, struct.pack("!H", len(nv[1])) + nv[1])
        ),
        st.tuples(st.sampled_from([b":event-type", b"n"]), st.integers(0, 12), st.binary(max_size=18)).map(
            lambda t: _header(t[0], t[1], t[2])
        ),
        st.binary(max_size=6),
    ),
    max_size=4,
).map(b"".join)


@st.composite
def _odd_message(draw: Any) -> bytes:
    headers = draw(_header_block)
    payload = draw(st.binary(max_size=20))
    total = draw(st.none() | st.integers(0, 16 + len(headers) + len(payload) + 4))
    return _message(headers, payload, total, draw(st.booleans()))


# `chunk` payloads other than {"bytes":"<base64>","p":"<padding>"}; b64 is {"text":"a"}.
_B64 = b"eyJ0ZXh0IjoiYSJ9"
_ODD_CHUNKS = [
    b'{"bytes":"!!"}',
    b'{"bytes":"' + _B64 + b'" }',
    b'{"bytes":"' + _B64 + b'","p":"a\\"}',
    b'{"bytes":"' + _B64 + b'","p":"\\u0041"}',
    b'{"p":"x","bytes":"' + _B64 + b'"}',
    b'{"bytes":"' + _B64 + b'","bytes":"' + _B64 + b'"}',
    b'{"bytes":"' + _B64[:-1] + b'"}',
    b'{"bytes":"' + _B64 + b'","p":"ab","q":1}',
    b'{"bytes":1}',
    b"[]",
]


@st.composite
def event_stream(draw: Any) -> tuple[str, bytes]:
    route = draw(st.sampled_from(["converse_stream", "invoke_stream"]))
    texts = draw(_texts)
    data = converse_stream(texts) if route == "converse_stream" else invoke_stream_anthropic(texts)
    messages = [data]
    if draw(st.booleans()):
        extra = draw(
            st.lists(
                st.one_of(
                    _odd_message(),
                    st.builds(
                        lambda t: invoke_chunk({"type": "content_block_delta", "delta": {"text": t}}),
                        st.text(),
                    ),
                    st.builds(
                        lambda p: encode_message({":event-type": "chunk", ":message-type": "event"}, p),
                        st.sampled_from(_ODD_CHUNKS),
                    ),
                ),
                max_size=3,
            )
        )
        at = draw(st.integers(0, len(extra)))
        messages = [*extra[:at], data, *extra[at:]]
    return route, b"".join(messages)


def test_odd_invoke_chunks_match_the_reference() -> None:
    info = _bedrock("invoke_stream")
    for payload in _ODD_CHUNKS:
        data = encode_message({":event-type": "chunk", ":message-type": "event"}, payload)
        assert trace(bedrock.StreamMeter(info), [data]) == trace(ref.BedrockStreamMeter(info), [data]), (
            payload
        )


def test_odd_headers_are_read_or_refused_as_botocore_does() -> None:
    string = _header(b":message-type", 7, b"\x00\x05event")
    for headers in (
        string + string,  # repeated: DuplicateHeader
        string + _header(b"n", 4, b"\x00\x00\x00\x07"),  # an integer header
        string + _header(b"n", 7, b"\x00\x09abc"),  # a value longer than the block
        string + _header(b"n", 13, b""),  # no such type
        string + b"\x05ab",  # a name longer than the block
        string + _header(b"\xff", 7, b"\x00\x01a"),  # not UTF-8
    ):
        chunks = [_message(headers, b'{"a":1}')]
        assert _decode(EventStreamDecoder(), chunks) == _decode(ref.EventStreamDecoder(), chunks)


@SETTINGS
@given(event_stream(), _cuts)
def test_bedrock_meters_match_the_reference(stream: tuple[str, bytes], cuts: list[int]) -> None:
    route, data = stream
    info = _bedrock(route)
    chunks = split(data, cuts)
    assert trace(bedrock.StreamMeter(info), chunks) == trace(ref.BedrockStreamMeter(info), chunks)


def _decode(decoder: Any, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in [*chunks, b""]:
        try:
            out.append([(m.headers, m.payload) for m in decoder.feed(chunk)])
        except Exception as exc:
            out.append(("raised", type(exc).__name__, str(exc)))
    return out


@SETTINGS
@given(st.lists(st.one_of(_odd_message(), st.binary(max_size=8)), max_size=5), _cuts)
def test_event_stream_decoder_matches_botocore_on_hostile_bytes(
    messages: list[bytes], cuts: list[int]
) -> None:
    chunks = split(b"".join(messages), cuts)
    assert _decode(EventStreamDecoder(), chunks) == _decode(ref.EventStreamDecoder(), chunks)
