"""Amazon Bedrock runtime wire format: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream.

Usage semantics: Converse ``usage.inputTokens`` EXCLUDES cache reads and
writes (``cacheReadInputTokens``, ``cacheWriteInputTokens``);
``cacheDetails`` [{ttl, inputTokens}] splits the writes by TTL. ConverseStream
reports the same object in its ``metadata`` event. InvokeModel reports totals
in ``X-Amzn-Bedrock-*-Token-Count`` headers (preferred) and a model-family
body; InvokeModelWithResponseStream in base64 ``chunk`` payloads whose last
one carries ``amazon-bedrock-invocationMetrics``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from tokenfuse.protocols import anthropic, openai
from tokenfuse.protocols.base import (
    ProtocolError,
    RequestInfo,
    TextScanner,
    as_int,
    body_changed,
    compact_json,
    describe,
    encoded_body,
    loads_object,
    off_list,
    opt_bool,
    opt_choices,
    opt_limit,
    parse_body,
    require_list,
    sub_object,
    text_keys,
)
from tokenfuse.protocols.estimate import tokens_from_bytes
from tokenfuse.protocols.eventstream import EventStreamDecoder, EventStreamError, encode_exception
from tokenfuse.usage import Usage

ROUTES: tuple[str, ...] = ("converse", "converse_stream", "invoke", "invoke_stream", "count_tokens")
_ERR = "ValidationException"

# Cross-region inference profiles prefix the model id with a geography.
_GEO_PREFIXES = frozenset({"us", "eu", "apac", "global", "us-gov", "jp", "au", "ca", "apne", "euc"})

# Where each InvokeModel family takes its output limit; the first path is the
# default, a later one wins only when the client already used it.
_MAX_TOKEN_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "anthropic": (("max_tokens",),),
    "meta": (("max_gen_len",),),
    "titan": (("textGenerationConfig", "maxTokenCount"),),
    "nova": (("inferenceConfig", "maxTokens"), ("inferenceConfig", "max_new_tokens")),
    "openai": (("max_completion_tokens",), ("max_tokens",)),
    "generic": (("max_tokens",),),
}


def model_family(model_id: str, body: Mapping[str, Any] | None = None) -> str:
    """InvokeModel body family of a model id, inference profile id or ARN.

    An application inference profile ARN does not name its model; the body's
    shape decides then."""
    base = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    parts = base.split(".")
    if len(parts) > 2 and parts[0] in _GEO_PREFIXES:
        parts = parts[1:]
    if len(parts) >= 2:
        provider, name = parts[0], parts[1]
        if provider == "amazon":
            if name.startswith("nova"):
                return "nova"
            if name.startswith("titan"):
                return "titan"
        elif provider in ("anthropic", "meta", "openai"):
            return provider
        elif provider in ("mistral", "cohere", "ai21", "deepseek", "qwen", "writer", "moonshotai", "minimax"):
            return "generic"
    if body is not None:
        if "anthropic_version" in body:
            return "anthropic"
        if "textGenerationConfig" in body or "inputText" in body:
            return "titan"
        if "inferenceConfig" in body or "schemaVersion" in body:
            return "nova"
        if "max_gen_len" in body:
            return "meta"
        if "max_completion_tokens" in body:
            return "openai"
    return "generic"


def _get_path(body: Mapping[str, Any], path: tuple[str, ...]) -> tuple[Mapping[str, Any] | None, Any]:
    obj: Any = body
    for key in path[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(obj, dict):
        return None, None
    return obj, obj.get(path[-1])


# Every output-limit field any InvokeModel family knows. All that are present
# count (the largest is the bound) and all are rewritten, so a family guessed
# wrong from an application inference profile ARN cannot leave the real one free.
_ALL_LIMIT_PATHS: tuple[tuple[str, ...], ...] = tuple(
    dict.fromkeys(
        [p for paths in _MAX_TOKEN_PATHS.values() for p in paths]
        + [("maxTokens",), ("max_new_tokens",), ("parameters", "max_new_tokens")]
    )
)
_LIMIT_ROOTS = tuple(dict.fromkeys(p[0] for p in _ALL_LIMIT_PATHS))
# Fields that make a model generate (and bill) several completions: OpenAI `n`,
# `best_of`, Cohere `num_generations`, AI21 `numResults`.
_CHOICE_FIELDS = ("n", "best_of", "num_generations", "numResults")
# Converse passes these through to the model's own body.
_ADDITIONAL = "additionalModelRequestFields"
# performanceConfig.latency and serviceTier.type values billed at standard rates or less.
_STANDARD_LATENCY = frozenset({"standard"})
_STANDARD_TIERS = frozenset({"default", "flex"})


def _where(path: tuple[str, ...], prefix: str = "") -> str:
    return prefix + "".join(k + "." for k in path[:-1])


def _read_limits(body: Mapping[str, Any], paths: tuple[tuple[str, ...], ...], prefix: str = "") -> list[int]:
    limits = []
    for path in paths:
        parent, value = _get_path(body, path)
        if parent is not None and value is not None:
            limit = opt_limit(parent, path[-1], _ERR, _where(path, prefix))
            if limit is not None:
                limits.append(limit)
    return limits


def _read_choices(body: Mapping[str, Any], prefix: str = "") -> int:
    return max(opt_choices(body, k, _ERR, prefix) for k in _CHOICE_FIELDS)


def parse_request(route: str, body: bytes, model_from_path: str | None = None) -> RequestInfo:
    if route not in ROUTES:
        raise ProtocolError(404, "ResourceNotFoundException", f"Unknown Bedrock route {route!r}.")
    model = unquote(model_from_path or "")
    if not model:
        raise ProtocolError(
            400,
            _ERR,
            "The model id is missing from the URL. Call /model/{modelId}/" + route.replace("_", "-") + ".",
        )
    parsed = parse_body(body, _ERR)
    obj = parsed.obj
    unbounded: list[str] = []
    priced: list[str] = []
    if route == "count_tokens":
        # CountTokens bills nothing, so nothing in it needs a bound; only its shape is checked.
        _count_tokens_input(obj)
        limits, choices = [], 1
    elif route.startswith("converse"):
        require_list(obj, "messages", _ERR, optional=True)
        require_list(obj, "system", _ERR, optional=True)
        config = sub_object(obj, "inferenceConfig", _ERR)
        limits = _read_limits(config, (("maxTokens",),), "inferenceConfig.")
        extra = sub_object(obj, _ADDITIONAL, _ERR)
        limits += _read_limits(extra, _ALL_LIMIT_PATHS, _ADDITIONAL + ".")
        choices = _read_choices(extra, _ADDITIONAL + ".")
        _converse_billed_outside_the_body(obj, unbounded, priced)
    else:
        if "messages" in obj:
            require_list(obj, "messages", _ERR)
        if "stream" in obj:
            opt_bool(obj, "stream", _ERR)
        limits = _read_limits(obj, _ALL_LIMIT_PATHS)
        choices = _read_choices(obj)
        family = model_family(model, obj)
        if family == "anthropic":
            anthropic.billed_outside_the_body(obj, unbounded, priced)
    if model.startswith("arn:") and ":prompt/" in model:
        unbounded.append(f"model {describe(model)} is a Prompt management prompt held by Bedrock")
    if obj.get("promptVariables") is not None:
        unbounded.append("promptVariables: fills a prompt held by Bedrock")
    return RequestInfo(
        protocol="bedrock",
        route=route,
        model=model,
        stream=route.endswith("_stream"),
        max_tokens=max(limits) if limits else None,
        prompt_bytes=parsed.prompt_bytes,
        cache_writes_possible=parsed.cache_marker,
        cache_1h=parsed.cache_marker and parsed.ttl_1h,
        body=obj,
        choices=choices,
        unbounded=tuple(unbounded),
        priced_options=tuple(priced),
        canonical=parsed.canonical,
    )


def _count_tokens_input(obj: Mapping[str, Any]) -> None:
    """``{"input": {"converse": {...}}}`` or ``{"input": {"invokeModel": {"body": base64}}}``."""
    wrapped = sub_object(obj, "input", _ERR)
    if len(wrapped) != 1 or not wrapped.keys() <= {"converse", "invokeModel"}:
        raise ProtocolError(
            400, _ERR, "CountTokens needs input with exactly one of converse (a Converse request's messages, "
            "system, toolConfig) or invokeModel (an InvokeModel body, base64-encoded, in body)."
        )
    if "converse" in wrapped:
        converse = wrapped["converse"]
        if not isinstance(converse, dict):
            raise ProtocolError(400, _ERR, "input.converse must be an object: a Converse request's fields.")
        for key in ("messages", "system"):
            if converse.get(key) is not None and not isinstance(converse[key], list):
                raise ProtocolError(400, _ERR, f"input.converse.{key} must be an array.")
    else:
        invoke = wrapped["invokeModel"]
        if not isinstance(invoke, dict) or not isinstance(invoke.get("body"), str):
            raise ProtocolError(400, _ERR, "input.invokeModel.body must be the InvokeModel body, base64-encoded.")


def _converse_billed_outside_the_body(
    obj: Mapping[str, Any], unbounded: list[str], priced: list[str]
) -> None:
    perf = obj.get("performanceConfig")
    latency = perf.get("latency") if isinstance(perf, dict) else perf
    if off_list(latency, _STANDARD_LATENCY):
        priced.append(f"performanceConfig.latency={describe(latency)} is billed above standard rates")
    tier = obj.get("serviceTier")
    kind = tier.get("type") if isinstance(tier, dict) else tier
    if off_list(kind, _STANDARD_TIERS):
        priced.append(f"serviceTier.type={describe(kind)} is billed above standard rates")
    if obj.get("guardrailConfig") is not None:
        priced.append(
            "guardrailConfig: Bedrock Guardrails bill per text unit, which the gateway does not price"
        )
    config = obj.get("toolConfig")
    tools = config.get("tools") if isinstance(config, dict) else None
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("systemTool") is not None:
                unbounded.append(
                    f"toolConfig systemTool={describe(tool['systemTool'])} runs on Bedrock's side"
                )


def set_max_tokens(info: RequestInfo, value: int) -> None:
    body = info.body
    if info.route.startswith("converse"):
        config = body.get("inferenceConfig")
        if not isinstance(config, dict):
            config = body["inferenceConfig"] = {}
        config["maxTokens"] = value
        extra = body.get(_ADDITIONAL)
        if isinstance(extra, dict):
            _rewrite_present(extra, value)
        body_changed(info, "inferenceConfig", _ADDITIONAL)
    else:
        paths = _MAX_TOKEN_PATHS[model_family(info.model, body)]
        chosen = paths[0]
        for path in paths:
            parent, current = _get_path(body, path)
            if parent is not None and current is not None:
                chosen = path
                break
        obj = body
        for key in chosen[:-1]:
            nxt = obj.get(key)
            if not isinstance(nxt, dict):
                nxt = obj[key] = {}
            obj = nxt
        obj[chosen[-1]] = value
        _rewrite_present(body, value)
        body_changed(info, *_LIMIT_ROOTS)
    info.max_tokens = value


def _rewrite_present(body: dict[str, Any], value: int) -> None:
    for path in _ALL_LIMIT_PATHS:
        parent, current = _get_path(body, path)
        if parent is not None and current is not None:
            parent[path[-1]] = value  # type: ignore[index]


def set_model(info: RequestInfo, model: str) -> None:
    """Serve the request as `model` (budget-aware routing, docs/routing.md).

    Bedrock names the model in the URL path, not the body: the gateway builds
    the upstream path from `info.model` (tokenfuse.gateway.upstream.bedrock_path).
    An InvokeModel body is in the model family's own format, so a rule may only
    move it within one family (tokenfuse.routing checks `model_family`).
    """
    info.model = model


def request_usage_in_stream(info: RequestInfo) -> None:
    return None


def encode_body(info: RequestInfo) -> bytes:
    return encoded_body(info)


# --- usage ----------------------------------------------------------------


def _split_details(write: int, details: object) -> tuple[int, int]:
    one_h = 0
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and d.get("ttl") == "1h":
                one_h += as_int(d.get("inputTokens"))
    one_h = min(one_h, write)
    return write - one_h, one_h


def converse_usage(u: Mapping[str, Any]) -> Usage:
    write_5m, write_1h = _split_details(as_int(u.get("cacheWriteInputTokens")), u.get("cacheDetails"))
    return Usage(
        input_uncached=as_int(u.get("inputTokens")),
        cache_read=as_int(u.get("cacheReadInputTokens")),
        cache_write=write_5m,
        cache_write_1h=write_1h,
        output=as_int(u.get("outputTokens")),
    )


_H_IN = "x-amzn-bedrock-input-token-count"
_H_OUT = "x-amzn-bedrock-output-token-count"
_H_READ = "x-amzn-bedrock-cache-read-input-token-count"
_H_WRITE = "x-amzn-bedrock-cache-write-input-token-count"


def _header_int(headers: Mapping[str, str], name: str) -> int:
    try:
        return max(int(headers.get(name, "0") or "0"), 0)
    except ValueError:
        return 0


def _anthropic_split(write: int, body_usage: object) -> tuple[int, int]:
    if write and isinstance(body_usage, dict) and isinstance(body_usage.get("cache_creation"), dict):
        fields = anthropic.UsageFields()
        fields.merge(body_usage)
        return fields.split_writes(write)
    return write, 0


def invoke_body_usage(obj: Mapping[str, Any]) -> Usage | None:
    """Usage from an InvokeModel body, recognised by its family's field names."""
    u = obj.get("usage")
    if isinstance(u, dict):
        if "input_tokens" in u or "cache_read_input_tokens" in u:  # anthropic
            return anthropic.usage_of(u)
        if "inputTokens" in u:  # nova
            write_5m, write_1h = _split_details(
                as_int(u.get("cacheWriteInputTokenCount", u.get("cacheWriteInputTokens"))),
                u.get("cacheDetails"),
            )
            return Usage(
                input_uncached=as_int(u.get("inputTokens")),
                cache_read=as_int(u.get("cacheReadInputTokenCount", u.get("cacheReadInputTokens"))),
                cache_write=write_5m,
                cache_write_1h=write_1h,
                output=as_int(u.get("outputTokens")),
            )
        if "prompt_tokens" in u:  # openai-compatible families
            return openai.usage_of("chat.completions", u)
    if "prompt_token_count" in obj:  # meta
        return Usage(
            input_uncached=as_int(obj.get("prompt_token_count")),
            output=as_int(obj.get("generation_token_count")),
        )
    if "inputTextTokenCount" in obj:  # titan text and embeddings
        results = obj.get("results")
        out = (
            sum(as_int(r.get("tokenCount")) for r in results if isinstance(r, dict))
            if isinstance(results, list)
            else 0
        )
        return Usage(input_uncached=as_int(obj.get("inputTextTokenCount")), output=out)
    return None


def usage_from_response(route: str, body: bytes, headers: Mapping[str, str]) -> Usage | None:
    if route == "count_tokens":
        return Usage()  # counting is free
    if route in ("invoke", "invoke_stream") and _H_IN in headers:
        write = _header_int(headers, _H_WRITE)
        body_usage = None
        if write and b"cache_creation" in body:
            obj = loads_object(body)
            body_usage = obj.get("usage") if obj is not None else None
        write_5m, write_1h = _anthropic_split(write, body_usage)
        return Usage(
            input_uncached=_header_int(headers, _H_IN),
            cache_read=_header_int(headers, _H_READ),
            cache_write=write_5m,
            cache_write_1h=write_1h,
            output=_header_int(headers, _H_OUT),
        )
    obj = loads_object(body)
    if obj is None:
        return None
    if route.startswith("converse"):
        u = obj.get("usage")
        return converse_usage(u) if isinstance(u, dict) else None
    return invoke_body_usage(obj)


# --- streams --------------------------------------------------------------

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
_CONVERSE_TEXT = text_keys(_CONVERSE_TEXT_KEYS)
_INVOKE_TEXT = text_keys(_INVOKE_TEXT_KEYS)
_METRICS = b"amazon-bedrock-invocationMetrics"
# A `chunk` payload as Bedrock writes it: the model's event base64-encoded, then
# random padding. Read without a JSON parse; any other spelling is parsed.
_PLAIN_CHUNK = re.compile(rb'\{"bytes":"([A-Za-z0-9+/=]*)"(?:,"p":"[A-Za-z0-9]*")?\}')


class StreamMeter:
    """Meters one AWS event stream; forwards every byte unchanged.

    A CRC or framing error means the upstream broke the stream: parsing stops
    there and the usage falls back to what was seen, estimated."""

    __slots__ = ("_broken", "_decoder", "_fields", "_final", "_info", "_scanner", "text_bytes", "text_events")

    def __init__(self, info: RequestInfo) -> None:
        self._info = info
        self._decoder = EventStreamDecoder()
        self._scanner = TextScanner(_CONVERSE_TEXT if info.route == "converse_stream" else _INVOKE_TEXT)
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
            self._text(self._scanner.count(payload, 0, len(payload)))
        elif kind == "metadata":
            obj = loads_object(payload)
            u = obj.get("usage") if obj is not None else None
            if isinstance(u, dict):
                self._final = converse_usage(u)

    def _invoke_chunk(self, payload: bytes) -> None:
        try:
            plain = _PLAIN_CHUNK.fullmatch(payload)
            if plain is not None:
                # The same value as the JSON parse below would read: no escapes.
                inner = binascii.a2b_base64(plain.group(1), strict_mode=True)
            else:
                outer = loads_object(payload)
                encoded = outer.get("bytes") if outer is not None else None
                if not isinstance(encoded, str):
                    return
                inner = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return
        self._text(self._scanner.count(inner, 0, len(inner)))
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


# --- errors ---------------------------------------------------------------

# botocore retries these codes and statuses (retries/standard.py, data/_retry.json).
_RETRIED_STATUS = frozenset({429, 500, 502, 503, 504, 509})
_RETRIED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ModelNotReadyException",
    }
)


def error_response(
    status: int, error_type: str, message: str, *, retryable: bool = True
) -> tuple[int, list[tuple[str, str]], bytes]:
    if not retryable and (status in _RETRIED_STATUS or error_type in _RETRIED_CODES):
        status, error_type = 400, "ServiceQuotaExceededException"
    body = json.dumps({"message": message}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = [("content-type", "application/json"), ("x-amzn-errortype", error_type)]
    if not retryable:
        headers.append(("x-should-retry", "false"))
    return status, headers, body


def stream_exception(error_type: str, message: str) -> bytes:
    """An event-stream exception message, for errors after the stream started."""
    return encode_exception(error_type, compact_json({"message": message}))
