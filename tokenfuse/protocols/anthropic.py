"""Anthropic Messages wire format (``/v1/messages`` and ``/v1/messages/count_tokens``).

Usage semantics: ``input_tokens`` EXCLUDES cache reads and writes, which come
as ``cache_read_input_tokens`` and ``cache_creation_input_tokens``; when a
``cache_creation`` object is present it splits the writes into 5-minute and
1-hour ones, otherwise every write is a 5-minute write. In a stream,
``message_start.message.usage`` carries the input and cache figures and each
``message_delta.usage`` is CUMULATIVE: the latest non-null value of each field
wins, nothing is summed.
"""

from __future__ import annotations

import json
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
    opt_limit,
    parse_body,
    require_list,
    require_model,
    text_keys,
)
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.protocols.sse import SSEParser
from tokenfuse.usage import Usage

ROUTES: tuple[str, ...] = ("messages", "count_tokens")
_ERR = "invalid_request_error"

_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

# Tools Anthropic runs itself, billed per use and adding their results as input.
_SERVER_TOOL_PREFIXES = ("web_search_", "web_fetch_", "code_execution_")
# `service_tier` values billed at standard rates: Priority Tier is a capacity
# commitment drawn down at standard ratios, not a per-request premium.
_STANDARD_TIERS = frozenset({"auto", "standard_only"})
_STANDARD_SPEEDS = frozenset({"standard"})
_GLOBAL_GEO = frozenset({"global"})


def parse_request(route: str, body: bytes, model_from_path: str | None = None) -> RequestInfo:
    if route not in ROUTES:
        raise ProtocolError(404, "not_found_error", f"Unknown Anthropic route {route!r}.")
    parsed = parse_body(body, _ERR)
    obj = parsed.obj
    model = require_model(obj, _ERR)
    require_list(obj, "messages", _ERR)
    unbounded: list[str] = []
    priced: list[str] = []
    if route == "messages":
        stream = opt_bool(obj, "stream", _ERR)
        max_tokens = opt_limit(obj, "max_tokens", _ERR)
        cache = parsed.cache_marker
        billed_outside_the_body(obj, unbounded, priced)
    else:
        stream, max_tokens, cache = False, 0, False
    return RequestInfo(
        protocol="anthropic",
        route=route,
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        prompt_bytes=parsed.prompt_bytes,
        cache_writes_possible=cache,
        cache_1h=cache and parsed.ttl_1h,
        body=obj,
        unbounded=tuple(unbounded),
        priced_options=tuple(priced),
        canonical=parsed.canonical,
    )


def billed_outside_the_body(obj: Mapping[str, Any], unbounded: list[str], priced: list[str]) -> None:
    """Append what a Messages body can be billed for beyond its bytes and max_tokens."""
    tools = obj.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind.startswith(_SERVER_TOOL_PREFIXES):
                unbounded.append(f"tools type={describe(kind)} runs on Anthropic's side, billed per use")
    if obj.get("mcp_servers"):
        unbounded.append("mcp_servers: remote MCP tool calls add input the body does not show")
    container = obj.get("container")
    if container is not None:
        unbounded.append(f"container={describe(container)}: a code-execution container is billed by time")
    tier = obj.get("service_tier")
    if off_list(tier, _STANDARD_TIERS):
        priced.append(f"service_tier={describe(tier)} is not a standard-rate tier")
    speed = obj.get("speed")
    if off_list(speed, _STANDARD_SPEEDS):
        priced.append(f"speed={describe(speed)} is billed at a multiple of standard rates")
    geo = obj.get("inference_geo")
    if off_list(geo, _GLOBAL_GEO):
        priced.append(f"inference_geo={describe(geo)} is billed above global rates on newer models")


def set_max_tokens(info: RequestInfo, value: int) -> None:
    if info.route != "messages":
        return
    info.body["max_tokens"] = value
    body_changed(info, "max_tokens")
    info.max_tokens = value


def set_model(info: RequestInfo, model: str) -> None:
    """Serve the request as `model` (budget-aware routing, docs/routing.md)."""
    info.body["model"] = model
    body_changed(info, "model")
    info.model = model


def request_usage_in_stream(info: RequestInfo) -> None:
    return None


def encode_body(info: RequestInfo) -> bytes:
    return encoded_body(info)


class UsageFields:
    """Anthropic usage figures merged field by field, latest non-null wins."""

    __slots__ = ("cache_creation", "values")

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.cache_creation: Mapping[str, Any] | None = None

    def merge(self, u: Mapping[str, Any]) -> None:
        for key in _USAGE_KEYS:
            v = u.get(key)
            if v is not None:
                self.values[key] = as_int(v)
        cc = u.get("cache_creation")
        if isinstance(cc, dict):
            self.cache_creation = cc

    @property
    def seen(self) -> bool:
        return bool(self.values) or self.cache_creation is not None

    def output(self) -> int:
        return self.values.get("output_tokens", 0)

    def to_usage(self) -> Usage:
        v = self.values
        write_5m, write_1h = self.split_writes(v.get("cache_creation_input_tokens"))
        return Usage(
            input_uncached=v.get("input_tokens", 0),
            cache_read=v.get("cache_read_input_tokens", 0),
            cache_write=write_5m,
            cache_write_1h=write_1h,
            output=v.get("output_tokens", 0),
        )

    def split_writes(self, total: int | None) -> tuple[int, int]:
        """(5-minute, 1-hour) writes of `total`; all 5-minute without a breakdown."""
        cc = self.cache_creation
        if cc is None:
            return (total or 0, 0)
        one_h = as_int(cc.get("ephemeral_1h_input_tokens"))
        if total is None:
            return (as_int(cc.get("ephemeral_5m_input_tokens")), one_h)
        one_h = min(one_h, total)
        return (total - one_h, one_h)


def usage_of(u: Mapping[str, Any]) -> Usage:
    fields = UsageFields()
    fields.merge(u)
    return fields.to_usage()


def usage_from_response(route: str, body: bytes, headers: Mapping[str, str]) -> Usage | None:
    obj = loads_object(body)
    if obj is None or obj.get("type") == "error":
        return None
    if route == "count_tokens":
        return Usage() if "input_tokens" in obj else None
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    return usage_of(u)


# --- streams --------------------------------------------------------------

TEXT_KEYS = (b"text", b"thinking", b"partial_json")
_TEXT_PATTERN = text_keys(TEXT_KEYS)


class StreamMeter:
    """Meters one Anthropic SSE stream; forwards every byte unchanged.

    Chunks of the common shape take `SSEParser.feed_simple` and are read in
    place, by offsets; the rest take the general parser, with the same result."""

    __slots__ = ("_fields", "_final", "_info", "_parser", "_scanner", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._parser = SSEParser()
        self._scanner = TextScanner(_TEXT_PATTERN)
        self._fields = UsageFields()
        self._final = False
        self.text_bytes = 0
        self.text_events = 0

    def feed(self, chunk: bytes) -> bytes:
        simple = self._parser.feed_simple(chunk)
        observe = self._observe
        if simple is None:
            for ev in self._parser.feed(chunk):
                if ev.data:
                    observe(ev.event, ev.data, 0, len(ev.data))
            return chunk
        data, events = simple
        for event, start, end in events:
            if start != end:
                observe(event, data, start, end)
        return chunk

    def finish(self) -> bytes:
        for ev in self._parser.finish():
            if ev.data:
                self._observe(ev.event, ev.data, 0, len(ev.data))
        return b""

    def _text(self, n: int) -> None:
        if n:
            self.text_bytes += n
            self.text_events += 1

    def _observe(self, event: bytes | None, data: bytes, start: int, end: int) -> None:
        """Record what the event with non-empty data ``data[start:end]`` carries."""
        if event == b"content_block_delta":
            self._text(self._scanner.count(data, start, end))
            return
        if event is None:
            # The `event:` line is optional in SSE; fall back to the payload's type.
            find = data.find
            if find(b'"content_block_delta"', start, end) >= 0:
                self._text(self._scanner.count(data, start, end))
                return
            if find(b'"message_start"', start, end) < 0 and find(b'"message_delta"', start, end) < 0:
                return
        elif event != b"message_start" and event != b"message_delta":
            return
        obj = loads_object(data[start:end])
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
        return meter_usage(self._fields, self._final, self.text_bytes, self._info)


def meter_usage(fields: UsageFields, final: bool, text_bytes: int, info: RequestInfo) -> Usage:
    """Usage from merged fields; output estimated (and marked) unless final."""
    u = fields.to_usage()
    if final:
        return u
    u.output = max(u.output, tokens_from_bytes(text_bytes))
    if not fields.values.keys() & {"input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"}:
        u.input_uncached = tokens_from_bytes(info.prompt_bytes)
    u.estimated = True
    return u


# --- errors ---------------------------------------------------------------


def error_response(
    status: int, error_type: str, message: str, *, retryable: bool = True
) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    headers = [("content-type", "application/json")]
    if not retryable:
        headers.append(("x-should-retry", "false"))
    return status, headers, body
