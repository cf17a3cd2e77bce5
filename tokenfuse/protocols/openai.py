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
    body_changed,
    describe,
    encoded_body,
    loads_object,
    off_list,
    opt_bool,
    opt_choices,
    opt_limit,
    parse_body,
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

# Every output-limit field a route may carry, the one written by default first.
# Responses takes only `max_output_tokens`; the chat names are read too, since
# an OpenAI-compatible upstream may honour them.
_LIMIT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens", "max_completion_tokens", "max_tokens"),
}
# Fields that make the provider generate (and bill) several completions.
_CHOICE_FIELDS = ("n", "best_of")

# Responses tools run by OpenAI and billed per call or by the content they pull in.
_SERVER_TOOL_PREFIXES = (
    "web_search",
    "file_search",
    "code_interpreter",
    "image_generation",
    "mcp",
    "computer_use",
)
# Responses fields that bring in context OpenAI holds, which the body does not show.
_SERVER_CONTEXT_FIELDS = ("previous_response_id", "conversation", "prompt")
# Chat models that search the web on every request.
_SEARCH_MODEL = re.compile(r"search", re.IGNORECASE)
# service_tier values billed at or below standard rates. `auto` uses the tier set
# in the OpenAI project, which must not be set to priority (docs/protocols.md).
_STANDARD_TIERS = frozenset({"auto", "default", "flex"})


def parse_request(route: str, body: bytes, model_from_path: str | None = None) -> RequestInfo:
    if route not in ROUTES:
        raise ProtocolError(404, _ERR, f"Unknown OpenAI route {route!r}.")
    parsed = parse_body(body, _ERR)
    obj = parsed.obj
    model = require_model(obj, _ERR)
    stream = False
    max_tokens: int | None = 0
    choices = 1
    unbounded: list[str] = []
    priced: list[str] = []
    if route == "chat.completions":
        require_list(obj, "messages", _ERR)
        stream = opt_bool(obj, "stream", _ERR)
        sub_object(obj, "stream_options", _ERR)
    elif route == "responses":
        inp = obj.get("input")
        if inp is not None and not isinstance(inp, str | list):
            raise ProtocolError(
                400, _ERR, 'Field \'input\' must be a string or an array of input items. Send "input": "...".'
            )
        stream = opt_bool(obj, "stream", _ERR)
    elif obj.get("input") is None:
        raise ProtocolError(
            400, _ERR, 'Field \'input\' is missing. Send the text to embed as "input": "...".'
        )
    if route != "embeddings":
        limits = [v for k in _LIMIT_FIELDS[route] if (v := opt_limit(obj, k, _ERR)) is not None]
        max_tokens = max(limits) if limits else None
        choices = max(opt_choices(obj, k, _ERR) for k in _CHOICE_FIELDS)
        _billed_outside_the_body(route, model, obj, unbounded, priced)
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
        prompt_bytes=parsed.prompt_bytes,
        cache_writes_possible=False,
        cache_1h=False,
        body=obj,
        wants_usage_chunk=wants,
        choices=choices,
        unbounded=tuple(unbounded),
        priced_options=tuple(priced),
        canonical=parsed.canonical,
    )


def _billed_outside_the_body(
    route: str, model: str, obj: Mapping[str, Any], unbounded: list[str], priced: list[str]
) -> None:
    """Append what this request can be billed for beyond its body and output limit."""
    tier = obj.get("service_tier")
    if off_list(tier, _STANDARD_TIERS):
        priced.append(f"service_tier={describe(tier)} is billed above standard rates")
    if route == "chat.completions":
        if obj.get("web_search_options") is not None:
            unbounded.append("web_search_options: web searches are billed per call and add search results")
        elif _SEARCH_MODEL.search(model):
            unbounded.append(f"model {describe(model)} searches the web on every request (billed per search)")
        if obj.get("prediction") is not None:
            unbounded.append("prediction: rejected prediction tokens are billed as output beyond max_tokens")
        modalities = obj.get("modalities")
        if obj.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
            priced.append("audio output (audio / modalities) is billed at audio token rates")
        return
    for name in _SERVER_CONTEXT_FIELDS:
        value = obj.get(name)
        if value is not None:
            unbounded.append(f"{name}={describe(value)} brings in context held by OpenAI")
    if obj.get("background") is True:
        unbounded.append("background=true: the response is generated after this request returns")
    tools = obj.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind.startswith(_SERVER_TOOL_PREFIXES):
                unbounded.append(f"tools type={describe(kind)} runs on OpenAI's side, billed per call")
    inp = obj.get("input")
    if isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict) and item.get("type") == "item_reference":
                unbounded.append(
                    f"input item_reference id={describe(item.get('id'))} brings in a stored item"
                )


def set_max_tokens(info: RequestInfo, value: int) -> None:
    fields = _LIMIT_FIELDS.get(info.route)
    if fields is None:
        return
    body = info.body
    present = [k for k in fields if body.get(k) is not None]
    if not present:
        if info.route == "chat.completions" and not _REASONING_MODEL.match(info.model):
            present = ["max_tokens"]
        else:
            present = [fields[0]]
    for k in present:
        body[k] = value
    body_changed(info, *present)
    info.max_tokens = value


def set_model(info: RequestInfo, model: str) -> None:
    """Serve the request as `model` (budget-aware routing, docs/routing.md)."""
    old = info.model
    info.body["model"] = model
    changed = ["model"]
    if info.route == "chat.completions":
        if _REASONING_MODEL.match(model) and not _REASONING_MODEL.match(old) and "max_tokens" in info.body:
            # Reasoning models reject `max_tokens`: carry the caller's limit over.
            limit = info.body.pop("max_tokens")
            if info.body.get("max_completion_tokens") is None:
                info.body["max_completion_tokens"] = limit
            changed += ["max_tokens", "max_completion_tokens"]
        if _SEARCH_MODEL.search(model) and not _SEARCH_MODEL.search(old):
            info.unbounded += (f"model {describe(model)} searches the web on every request (billed per search)",)
    body_changed(info, *changed)
    info.model = model


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
    body_changed(info, "stream_options")
    info.wants_usage_chunk = False


def encode_body(info: RequestInfo) -> bytes:
    return encoded_body(info)


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
