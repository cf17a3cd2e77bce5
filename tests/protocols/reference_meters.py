"""The stream meters as they were before the fast paths (issue 14), kept
verbatim as the oracle of tests/protocols/test_stream_fast_path.py: for any
bytes, split anywhere, the meters in tokenfuse.protocols must relay the same
bytes, count the same text and report the same usage as these.

Only the classes and helpers the fast paths replaced are copied; what they
call that did not change (usage parsing, JSON loading) is imported."""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from botocore.eventstream import EventStreamBuffer, ParserError

from tokenfuse.protocols import anthropic
from tokenfuse.protocols.base import RequestInfo, as_int, loads_object
from tokenfuse.protocols.bedrock import converse_usage
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.protocols.eventstream import EventStreamError, Message
from tokenfuse.protocols.openai import usage_of
from tokenfuse.usage import Usage

# --- sse.py -----------------------------------------------------------------


@dataclass(slots=True)
class SSEEvent:
    event: bytes | None
    data: bytes | None
    raw: bytes


_EOL = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    __slots__ = ("_buf", "_cr", "_data", "_event", "_keep_raw", "_pos", "_start")

    def __init__(self, *, keep_raw: bool = False) -> None:
        self._keep_raw = keep_raw
        self._buf = bytearray()
        self._start = 0  # where the current (incomplete) event begins in _buf
        self._pos = 0  # first byte of _buf not yet split into lines
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._cr = False  # once a \r is seen, lines split on all three endings

    @property
    def pending(self) -> bytes:
        """Bytes fed that do not yet belong to a complete event."""
        return bytes(self._buf[self._start :])

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        out: list[SSEEvent] = []
        pos = self._pos
        n = len(buf)
        if not self._cr and 13 in chunk:
            self._cr = True
        cr = self._cr
        while True:
            if cr:
                m = _EOL.search(buf, pos)
                if m is None:
                    break
                i, after = m.start(), m.end()
                # A final lone \r may be the first half of \r\n: wait for the next byte.
                if after == n and i + 1 == n and buf[i] == 13:
                    break
            else:
                i = buf.find(b"\n", pos)
                if i < 0:
                    break
                after = i + 1
            line = buf[pos:i]
            pos = after
            if not line:
                out.append(self._dispatch(buf, pos))
            else:
                self._field(bytes(line))
        self._pos = pos
        if self._start:
            del buf[: self._start]
            self._pos -= self._start
            self._start = 0
        return out

    def finish(self) -> list[SSEEvent]:
        """End of stream: a trailing lone \\r ends its line. An event with no
        closing blank line is discarded, as the SSE grammar requires; its bytes
        stay in `pending`."""
        buf = self._buf
        if self._pos < len(buf) and buf.endswith(b"\r"):
            line = buf[self._pos : len(buf) - 1]
            self._pos = len(buf)
            if not line:
                return [self._dispatch(buf, self._pos)]
            self._field(bytes(line))
        return []

    def _dispatch(self, buf: bytearray, end: int) -> SSEEvent:
        raw = bytes(buf[self._start : end]) if self._keep_raw else b""
        data = b"\n".join(self._data) if self._data else None
        ev = SSEEvent(self._event, data, raw)
        self._start = end
        self._data = []
        self._event = None
        return ev

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value


# --- base.py ----------------------------------------------------------------

_KEY_PATTERNS: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def string_values_bytes(data: bytes, keys: tuple[bytes, ...]) -> int:
    """UTF-8 bytes of the string values of `keys` anywhere in a JSON text.

    Finds `"key":"...` by scanning, not by parsing: it runs on every streamed
    event. Only literals containing an escape are decoded.
    """
    pattern = _KEY_PATTERNS.get(keys)
    if pattern is None:
        alternatives = b"|".join(re.escape(k) for k in keys)
        pattern = _KEY_PATTERNS[keys] = re.compile(b'"(?:' + alternatives + rb')"\s*:\s*"')
    total = 0
    pos = 0
    while True:
        m = pattern.search(data, pos)
        if m is None:
            return total
        end = _string_end(data, m.end())
        if end < 0:
            return total
        total += _literal_bytes(data[m.end() : end])
        pos = end + 1


def _string_end(data: bytes, start: int) -> int:
    """Index of the closing quote of a JSON string whose body starts at `start`."""
    k = data.find(b'"', start)
    while k >= 0:
        backslashes = 0
        m = k - 1
        while m >= start and data[m] == 92:  # '\\'
            backslashes += 1
            m -= 1
        if backslashes % 2 == 0:
            return k
        k = data.find(b'"', k + 1)
    return -1


def _literal_bytes(literal: bytes) -> int:
    if b"\\" not in literal:
        return len(literal)
    try:
        text = json.loads(b'"' + literal + b'"')
    except ValueError:
        return len(literal)
    return len(str(text).encode("utf-8", "surrogatepass"))


# --- eventstream.py -----------------------------------------------------------

class EventStreamDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole messages back."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer.add_data(data)
        out: list[Message] = []
        try:
            for msg in self._buffer:
                out.append(Message({k: str(v) for k, v in msg.headers.items()}, msg.payload))
        except ParserError as exc:
            raise EventStreamError(str(exc)) from exc
        return out


# --- openai.py ----------------------------------------------------------------

_CHAT_TEXT_KEYS = (b"content", b"reasoning_content", b"reasoning", b"refusal", b"arguments")
_RESPONSES_TEXT_KEYS = (b"delta",)
_RESPONSES_FINAL = ("response.completed", "response.incomplete", "response.failed")
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*,')


def _has_usage(data: bytes) -> bool:
    """Cheap test for a `"usage": <not null>` member, before any JSON parse."""
    i = data.find(b'"usage"')
    n = len(data)
    while i >= 0:
        j = i + 7
        while j < n and data[j] in b" \t\r\n":
            j += 1
        if j < n and data[j] == 58:  # ':'
            j += 1
            while j < n and data[j] in b" \t\r\n":
                j += 1
            if data[j : j + 4] != b"null":
                return True
        i = data.find(b'"usage"', j)
    return False


_COMPACT_USAGE_NULL = b',"usage":null'


def _strip_usage_null(raw: bytes) -> bytes:
    """Remove the `"usage":null` member include_usage adds to every chunk.

    The top-level member is serialised last, so the last match is the one.
    Runs on every event: the compact form OpenAI sends is found by `rfind`
    (quotes inside JSON strings are escaped, so it cannot be part of a value);
    the regex is the fallback for other spacing."""
    i = raw.rfind(_COMPACT_USAGE_NULL)
    if i >= 0:
        end = i + len(_COMPACT_USAGE_NULL)
        if raw[end : end + 1] in (b"}", b",") and raw.find(b'"usage"', end) < 0:
            return raw[:i] + raw[end:]
    if b'"usage"' not in raw:
        return raw
    last = None
    for m in _USAGE_NULL.finditer(raw):
        last = m
    if last is None:
        return raw
    return raw[: last.start()] + raw[last.end() :]


class OpenAIStreamMeter:
    """Meters one OpenAI SSE stream; strips the usage chunk the gateway asked for."""

    __slots__ = ("_final", "_info", "_parser", "_strip", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._strip = info.route == "chat.completions" and not info.wants_usage_chunk
        self._parser = SSEParser(keep_raw=self._strip)
        self._final: Usage | None = None
        self.text_bytes = 0
        self.text_events = 0

    def feed(self, chunk: bytes) -> bytes:
        events = self._parser.feed(chunk)
        if not self._strip:
            for ev in events:
                self._observe(ev.data)
            return chunk
        out = []
        for ev in events:
            if self._observe(ev.data):
                continue
            out.append(_strip_usage_null(ev.raw))
        return b"".join(out)

    def finish(self) -> bytes:
        events = self._parser.finish()
        if not self._strip:
            for ev in events:
                self._observe(ev.data)
            return b""
        out = [_strip_usage_null(ev.raw) for ev in events if not self._observe(ev.data)]
        out.append(self._parser.pending)
        self._parser = SSEParser(keep_raw=True)
        return b"".join(out)

    def _observe(self, data: bytes | None) -> bool:
        """Record what the event carries; True when it is the usage-only chunk to drop."""
        if not data or data == b"[DONE]":
            return False
        route = self._info.route
        if route == "responses":
            n = string_values_bytes(data, _RESPONSES_TEXT_KEYS)
            if n:
                self.text_bytes += n
                self.text_events += 1
            if _has_usage(data):
                obj = loads_object(data)
                if obj is not None and obj.get("type") in _RESPONSES_FINAL:
                    resp = obj.get("response")
                    u = resp.get("usage") if isinstance(resp, dict) else None
                    if isinstance(u, dict):
                        self._final = usage_of(route, u)
            return False
        n = string_values_bytes(data, _CHAT_TEXT_KEYS)
        if n:
            self.text_bytes += n
            self.text_events += 1
        if not _has_usage(data):
            return False
        obj = loads_object(data)
        if obj is None:
            return False
        u = obj.get("usage")
        if not isinstance(u, dict):
            return False
        self._final = usage_of(route, u)
        return self._strip and obj.get("choices") == []

    def usage(self, complete: bool) -> Usage:
        if self._final is not None:
            return Usage(
                self._final.input_uncached,
                self._final.cache_read,
                self._final.cache_write,
                self._final.cache_write_1h,
                self._final.output,
            )
        return Usage(
            input_uncached=tokens_from_bytes(self._info.prompt_bytes),
            output=tokens_from_bytes(self.text_bytes),
            estimated=True,
        )




# --- anthropic.py -------------------------------------------------------------

TEXT_KEYS = (b"text", b"thinking", b"partial_json")


class AnthropicStreamMeter:
    """Meters one Anthropic SSE stream; forwards every byte unchanged."""

    __slots__ = ("_fields", "_final", "_info", "_parser", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._parser = SSEParser()
        self._fields = anthropic.UsageFields()
        self._final = False
        self.text_bytes = 0
        self.text_events = 0

    def feed(self, chunk: bytes) -> bytes:
        for ev in self._parser.feed(chunk):
            self._observe(ev.event, ev.data)
        return chunk

    def finish(self) -> bytes:
        for ev in self._parser.finish():
            self._observe(ev.event, ev.data)
        return b""

    def _text(self, n: int) -> None:
        if n:
            self.text_bytes += n
            self.text_events += 1

    def _observe(self, event: bytes | None, data: bytes | None) -> None:
        if not data:
            return
        if event == b"content_block_delta":
            self._text(string_values_bytes(data, TEXT_KEYS))
            return
        if event is None:
            # The `event:` line is optional in SSE; fall back to the payload's type.
            if b'"content_block_delta"' in data:
                self._text(string_values_bytes(data, TEXT_KEYS))
                return
            if b'"message_start"' not in data and b'"message_delta"' not in data:
                return
        elif event not in (b"message_start", b"message_delta"):
            return
        obj = loads_object(data)
        if obj is None:
            return
        kind = obj.get("type")
        if kind == "message_start":
            msg = obj.get("message")
            u = msg.get("usage") if isinstance(msg, dict) else None
        elif kind == "message_delta":
            u = obj.get("usage")
        else:
            return
        if isinstance(u, dict):
            self._fields.merge(u)
            if kind == "message_delta":
                self._final = True

    def usage(self, complete: bool) -> Usage:
        return anthropic.meter_usage(self._fields, self._final, self.text_bytes, self._info)




# --- bedrock.py ---------------------------------------------------------------

_CONVERSE_TEXT_KEYS = (b"text", b"input")
_INVOKE_TEXT_KEYS = (
    b"text",
    b"thinking",
    b"partial_json",
    b"generation",
    b"outputText",
    b"completion",
    b"content",
    b"reasoning_content",
)
_METRICS = b"amazon-bedrock-invocationMetrics"


class BedrockStreamMeter:
    """Meters one AWS event stream; forwards every byte unchanged.

    A CRC or framing error means the upstream broke the stream: parsing stops
    there and the usage falls back to what was seen, estimated."""

    __slots__ = ("_broken", "_decoder", "_fields", "_final", "_info", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._decoder = EventStreamDecoder()
        self._fields = anthropic.UsageFields()
        self._final: Usage | None = None
        self._broken = False
        self.text_bytes = 0
        self.text_events = 0

    @property
    def broken(self) -> bool:
        return self._broken

    def feed(self, chunk: bytes) -> bytes:
        if self._broken:
            return chunk
        try:
            messages = self._decoder.feed(chunk)
        except EventStreamError:
            self._broken = True
            return chunk
        converse = self._info.route == "converse_stream"
        for msg in messages:
            if msg.headers.get(":message-type") != "event":
                continue
            kind = msg.headers.get(":event-type")
            if converse:
                self._converse_event(kind, msg.payload)
            elif kind == "chunk":
                self._invoke_chunk(msg.payload)
        return chunk

    def finish(self) -> bytes:
        return b""

    def _text(self, n: int) -> None:
        if n:
            self.text_bytes += n
            self.text_events += 1

    def _converse_event(self, kind: str | None, payload: bytes) -> None:
        if kind == "contentBlockDelta":
            self._text(string_values_bytes(payload, _CONVERSE_TEXT_KEYS))
        elif kind == "metadata":
            obj = loads_object(payload)
            u = obj.get("usage") if obj is not None else None
            if isinstance(u, dict):
                self._final = converse_usage(u)

    def _invoke_chunk(self, payload: bytes) -> None:
        outer = loads_object(payload)
        encoded = outer.get("bytes") if outer is not None else None
        if not isinstance(encoded, str):
            return
        try:
            inner = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return
        self._text(string_values_bytes(inner, _INVOKE_TEXT_KEYS))
        has_metrics = _METRICS in inner
        if not has_metrics and b"message_start" not in inner and b"message_delta" not in inner:
            return
        obj = loads_object(inner)
        if obj is None:
            return
        kind = obj.get("type")
        if kind == "message_start":
            msg = obj.get("message")
            u = msg.get("usage") if isinstance(msg, dict) else None
            if isinstance(u, dict):
                self._fields.merge(u)
        elif kind == "message_delta":
            u = obj.get("usage")
            if isinstance(u, dict):
                self._fields.merge(u)
        metrics = obj.get(_METRICS.decode())
        if isinstance(metrics, dict):
            write = as_int(metrics.get("cacheWriteInputTokenCount"))
            write_5m, write_1h = self._fields.split_writes(write) if write else (0, 0)
            self._final = Usage(
                input_uncached=as_int(metrics.get("inputTokenCount")),
                cache_read=as_int(metrics.get("cacheReadInputTokenCount")),
                cache_write=write_5m,
                cache_write_1h=write_1h,
                output=as_int(metrics.get("outputTokenCount")),
            )

    def usage(self, complete: bool) -> Usage:
        if self._final is not None:
            f = self._final
            return Usage(f.input_uncached, f.cache_read, f.cache_write, f.cache_write_1h, f.output)
        if self._info.route == "invoke_stream":
            return anthropic.meter_usage(self._fields, False, self.text_bytes, self._info)
        return Usage(
            input_uncached=tokens_from_bytes(self._info.prompt_bytes),
            output=tokens_from_bytes(self.text_bytes),
            estimated=True,
        )


