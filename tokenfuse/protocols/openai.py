"""OpenAI wire format: Chat Completions, Responses and Embeddings.

Usage semantics: ``prompt_tokens`` (chat, embeddings) and ``input_tokens``
(responses) INCLUDE the cached tokens reported in ``*_tokens_details.
cached_tokens``; reasoning tokens are inside ``completion_tokens`` /
``output_tokens``. OpenAI bills no cache-write premium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tokenfuse.protocols.base import (
    ProtocolError,
    RequestInfo,
    as_int,
    compact_json,
    load_object,
    loads_object,
    opt_bool,
    opt_int,
    prompt_bound,
    require_list,
    require_model,
    string_values_bytes,
    sub_object,
)
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.protocols.sse import SSEParser
from tokenfuse.usage import Usage

ROUTES: tuple[str, ...] = ("chat.completions", "responses", "embeddings")
_ERR = "invalid_request_error"

# Reasoning models reject `max_tokens`; they take `max_completion_tokens`.
_REASONING_MODEL = re.compile(r"^(?:.*/)?(?:o\d|gpt-5)")


def parse_request(route: str, body: bytes, model_from_path: str | None = None) -> RequestInfo:
    if route not in ROUTES:
        raise ProtocolError(404, _ERR, f"Unknown OpenAI route {route!r}.")
    obj = load_object(body, _ERR)
    model = require_model(obj, _ERR)
    stream = False
    max_tokens: int | None
    if route == "chat.completions":
        require_list(obj, "messages", _ERR)
        stream = opt_bool(obj, "stream", _ERR)
        sub_object(obj, "stream_options", _ERR)
        mct = opt_int(obj, "max_completion_tokens", _ERR)
        mt = opt_int(obj, "max_tokens", _ERR)
        max_tokens = mct if mct is not None else mt
    elif route == "responses":
        inp = obj.get("input")
        if inp is not None and not isinstance(inp, str | list):
            raise ProtocolError(
                400, _ERR, 'Field \'input\' must be a string or an array of input items. Send "input": "...".'
            )
        stream = opt_bool(obj, "stream", _ERR)
        max_tokens = opt_int(obj, "max_output_tokens", _ERR)
    else:
        if obj.get("input") is None:
            raise ProtocolError(
                400, _ERR, 'Field \'input\' is missing. Send the text to embed as "input": "...".'
            )
        max_tokens = 0
    wants = True
    if stream and route == "chat.completions":
        opts = obj.get("stream_options")
        wants = isinstance(opts, dict) and opts.get("include_usage") is True
    return RequestInfo(
        protocol="openai",
        route=route,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        prompt_bytes=prompt_bound(body),
        cache_writes_possible=False,
        cache_1h=False,
        body=obj,
        wants_usage_chunk=wants,
    )


def set_max_tokens(info: RequestInfo, value: int) -> None:
    body = info.body
    if info.route == "chat.completions":
        fields = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
        if not fields:
            fields = ["max_completion_tokens" if _REASONING_MODEL.match(info.model) else "max_tokens"]
        for k in fields:
            body[k] = value
    elif info.route == "responses":
        body["max_output_tokens"] = value
    else:
        return
    info.max_tokens = value


def request_usage_in_stream(info: RequestInfo) -> None:
    if not (info.stream and info.route == "chat.completions"):
        return
    opts = info.body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return
    if isinstance(opts, dict):
        opts["include_usage"] = True
    else:
        info.body["stream_options"] = {"include_usage": True}
    info.wants_usage_chunk = False


def encode_body(info: RequestInfo) -> bytes:
    return compact_json(info.body)


def usage_of(route: str, u: Mapping[str, Any]) -> Usage:
    """A usage object of `route` (chat.completions, responses or embeddings) as a Usage."""
    if route == "responses":
        total = as_int(u.get("input_tokens"))
        details = u.get("input_tokens_details")
        out = as_int(u.get("output_tokens"))
    else:
        total = as_int(u.get("prompt_tokens"))
        details = u.get("prompt_tokens_details")
        out = as_int(u.get("completion_tokens"))
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached, total)
    if route == "embeddings":
        out = 0
    return Usage(input_uncached=total - cached, cache_read=cached, output=out)


def usage_from_response(route: str, body: bytes, headers: Mapping[str, str]) -> Usage | None:
    obj = loads_object(body)
    if obj is None:
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    return usage_of(route, u)


# --- streams --------------------------------------------------------------

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


class StreamMeter:
    """Meters one OpenAI SSE stream; strips the usage chunk the gateway asked for."""

    __slots__ = ("_final", "_info", "_parser", "_strip", "text_bytes")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._strip = info.route == "chat.completions" and not info.wants_usage_chunk
        self._parser = SSEParser(keep_raw=self._strip)
        self._final: Usage | None = None
        self.text_bytes = 0

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
            self.text_bytes += string_values_bytes(data, _RESPONSES_TEXT_KEYS)
            if _has_usage(data):
                obj = loads_object(data)
                if obj is not None and obj.get("type") in _RESPONSES_FINAL:
                    resp = obj.get("response")
                    u = resp.get("usage") if isinstance(resp, dict) else None
                    if isinstance(u, dict):
                        self._final = usage_of(route, u)
            return False
        self.text_bytes += string_values_bytes(data, _CHAT_TEXT_KEYS)
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


# --- errors ---------------------------------------------------------------


def error_response(
    status: int, error_type: str, message: str, *, retryable: bool = True, code: str | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    headers = [("content-type", "application/json")]
    if not retryable:
        headers.append(("x-should-retry", "false"))
    return status, headers, body
