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
    TextScanner,
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
    sub_object,
    text_keys,
)
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.protocols.sse import SimpleEvent, SSEEvent, SSEParser
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
_CHAT_TEXT = text_keys(_CHAT_TEXT_KEYS)
_RESPONSES_TEXT = text_keys(_RESPONSES_TEXT_KEYS)
_RESPONSES_FINAL = ("response.completed", "response.incomplete", "response.failed")
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*,')


def _has_usage(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Cheap test for a `"usage": <not null>` member in ``data[start:end]``, before any JSON parse."""
    n = len(data) if end is None else end
    find = data.find
    i = find(b'"usage"', start, n)
    while i >= 0:
        if data.startswith(b":null", i + 7, n):  # the compact null member, as sent
            i = find(b'"usage"', i + 8, n)
            continue
        j = i + 7
        while j < n and data[j] in b" \t\r\n":
            j += 1
        if j < n and data[j] == 58:  # ':'
            j += 1
            while j < n and data[j] in b" \t\r\n":
                j += 1
            if not data.startswith(b"null", j, n):
                return True
        i = find(b'"usage"', j, n)
    return False


_COMPACT_USAGE_NULL = b',"usage":null'
# The compact null member and the byte after it, as include_usage adds it.
_NULL_MEMBERS = (b',"usage":null}', b',"usage":null,')


def _strip_usage_null(raw: bytes) -> bytes:
    """Remove the `"usage":null` member include_usage adds to every chunk.

    The top-level member is serialised last, so the last match is the one.
    The compact form OpenAI sends is found by `rfind` (quotes inside JSON
    strings are escaped, so it cannot be part of a value); the regex is the
    fallback for other spacing. Returns `raw` itself when there is nothing to
    remove."""
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
    """Meters one OpenAI SSE stream; strips the usage chunk the gateway asked for.

    Chunks of the common shape take `SSEParser.feed_simple` and are read in
    place, by offsets; the rest take the general parser. Both give the same
    bytes out, counts and usage (tests/protocols/test_stream_fast_path.py)."""

    __slots__ = ("_final", "_info", "_parser", "_responses", "_strip", "_text", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._responses = info.route == "responses"
        self._strip = info.route == "chat.completions" and not info.wants_usage_chunk
        self._parser = SSEParser(keep_raw=self._strip)
        # Responses events differ from their start on (`sequence_number`): no prefix to remember.
        if self._responses:
            self._text = TextScanner(_RESPONSES_TEXT, b'"usage"', remember=False)
        else:
            self._text = TextScanner(_CHAT_TEXT, b'"usage"')
        self._final: Usage | None = None
        self.text_bytes = 0
        self.text_events = 0

    def feed(self, chunk: bytes) -> bytes:
        simple = self._parser.feed_simple(chunk)
        if simple is None:
            return self._relay(self._parser.feed(chunk), chunk)
        data, events = simple
        if self._strip:
            return self._strip_simple(data, events)
        observe = self._observe
        for _, start, end in events:
            observe(data, start, end)
        return chunk

    def finish(self) -> bytes:
        out = self._relay(self._parser.finish(), b"")
        if not self._strip:
            return out
        out += self._parser.pending
        self._parser = SSEParser(keep_raw=True)
        return out

    def _relay(self, events: list[SSEEvent], chunk: bytes) -> bytes:
        """The general path: what to relay of `chunk`, which completed `events`."""
        observe = self._observe
        if not self._strip:
            for ev in events:
                if ev.data is not None:
                    observe(ev.data, 0, len(ev.data))
            return chunk
        out = []
        for ev in events:
            if ev.data is not None and observe(ev.data, 0, len(ev.data)):
                continue
            out.append(_strip_usage_null(ev.raw))
        return b"".join(out)

    def _strip_simple(self, data: bytes, events: list[SimpleEvent]) -> bytes:
        """What to relay of simple `events` in `data`: each event's raw bytes
        with `"usage":null` stripped, the usage-only chunk dropped; the same as
        `_relay`, copying only around what changes."""
        pieces: list[bytes] = []
        done = 0  # data[:done] is in `pieces` or dropped
        raw = 0  # where the current event's raw bytes begin
        find = data.find
        scanner = self._text
        for name, start, end in events:
            n = scanner.count(data, start, end)
            if n:
                self.text_bytes += n
                self.text_events += 1
            # The first "usage" of the event's raw bytes (an `event:` line included).
            k = find(b'"usage"', raw if name is not None else scanner.clean, end)
            if k < 0:
                pass  # no usage, nothing to strip
            elif k > start and data[k - 1 : k + 13] in _NULL_MEMBERS and find(b'"usage"', k + 7, end) < 0:
                # Only the compact null member: no usage, and that member to strip
                # (what _strip_usage_null finds).
                pieces.append(data[done : k - 1])
                done = k + 12
            elif _has_usage(data, start, end) and self._usage(data, start, end):
                if raw > done:
                    pieces.append(data[done:raw])
                done = end + 2
            else:
                whole = data[raw : end + 2]
                stripped = _strip_usage_null(whole)
                if stripped is not whole:
                    pieces.append(data[done:raw])
                    pieces.append(stripped)
                    done = end + 2
            raw = end + 2
        if not done:
            return data if raw == len(data) else data[:raw]
        pieces.append(data[done:raw])
        return b"".join(pieces)

    def _observe(self, data: bytes, start: int, end: int) -> bool:
        """Record what the event ``data[start:end]`` carries; True when it is
        the usage-only chunk to drop."""
        scanner = self._text
        n = scanner.count(data, start, end)
        if n:
            self.text_bytes += n
            self.text_events += 1
        # No "usage" begins before `clean`. Most events have none, or only the
        # compact null member include_usage adds: decided here without a call.
        k = data.find(b'"usage"', scanner.clean, end)
        if k >= 0 and data.startswith(b":null", k + 7, end):
            k = data.find(b'"usage"', k + 8, end)
        return k >= 0 and _has_usage(data, k, end) and self._usage(data, start, end)

    def _usage(self, data: bytes, start: int, end: int) -> bool:
        """Record the usage the event ``data[start:end]`` carries, which has a
        `"usage"` member that is not null; True when it is the usage-only chunk
        to drop."""
        obj = loads_object(data[start:end])
        if obj is None:
            return False
        if self._responses:
            if obj.get("type") in _RESPONSES_FINAL:
                resp = obj.get("response")
                u = resp.get("usage") if isinstance(resp, dict) else None
                if isinstance(u, dict):
                    self._final = usage_of("responses", u)
            return False
        u = obj.get("usage")
        if not isinstance(u, dict):
            return False
        self._final = usage_of(self._info.route, u)
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
