"""Realistic wire payloads for the protocol tests, written from the documented formats."""

from __future__ import annotations

import base64
import json
from typing import Any

from tokenfuse.protocols.eventstream import encode_event, encode_exception


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(data: bytes, event: str | None = None, eol: bytes = b"\n") -> bytes:
    head = b"event: " + event.encode() + eol if event else b""
    return head + b"data: " + data + eol + eol


# --- OpenAI chat ------------------------------------------------------------


def chat_chunk(delta: dict[str, Any], finish: str | None = None, *, usage_null: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "created": 1763900000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0aa8d3e20b",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_null:
        obj["usage"] = None
    return obj


CHAT_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
}


def chat_stream(texts: list[str], *, include_usage: bool, usage: dict[str, Any] | None = None) -> bytes:
    """The bytes OpenAI sends for a chat stream, with or without include_usage."""
    events = [chat_chunk({"role": "assistant", "content": "", "refusal": None}, usage_null=include_usage)]
    events += [chat_chunk({"content": t}, usage_null=include_usage) for t in texts]
    events.append(chat_chunk({}, "stop", usage_null=include_usage))
    out = b"".join(sse(dumps(e)) for e in events)
    if include_usage:
        final = {
            "id": "chatcmpl-AbC123",
            "object": "chat.completion.chunk",
            "created": 1763900000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0aa8d3e20b",
            "choices": [],
            "usage": usage or CHAT_USAGE,
        }
        out += sse(dumps(final))
    return out + b"data: [DONE]\n\n"


# --- OpenAI responses -------------------------------------------------------

RESPONSES_USAGE = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4096},
    "output_tokens": 900,
    "output_tokens_details": {"reasoning_tokens": 700},
    "total_tokens": 5900,
}


def responses_stream(texts: list[str], *, complete: bool = True) -> bytes:
    resp: dict[str, Any] = {"id": "resp_1", "object": "response", "status": "in_progress", "usage": None}
    parts = [
        sse(dumps({"type": "response.created", "sequence_number": 0, "response": resp}), "response.created"),
    ]
    for i, t in enumerate(texts):
        ev = {
            "type": "response.output_text.delta",
            "sequence_number": i + 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": t,
        }
        parts.append(sse(dumps(ev), "response.output_text.delta"))
    if complete:
        done = dict(resp, status="completed", usage=RESPONSES_USAGE)
        parts.append(
            sse(
                dumps({"type": "response.completed", "sequence_number": 99, "response": done}),
                "response.completed",
            )
        )
    return b"".join(parts)


# --- Anthropic --------------------------------------------------------------


def anthropic_stream(
    texts: list[str],
    *,
    start_usage: dict[str, Any],
    deltas: list[dict[str, Any]],
    eol: bytes = b"\n",
) -> bytes:
    msg: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    out = [sse(dumps({"type": "message_start", "message": msg}), "message_start", eol)]
    out.append(
        sse(
            dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            "content_block_start",
            eol,
        )
    )
    out.append(sse(dumps({"type": "ping"}), "ping", eol))
    for t in texts:
        ev = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        out.append(sse(dumps(ev), "content_block_delta", eol))
    out.append(sse(dumps({"type": "content_block_stop", "index": 0}), "content_block_stop", eol))
    for u in deltas:
        ev = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": u,
        }
        out.append(sse(dumps(ev), "message_delta", eol))
    if deltas:
        out.append(sse(dumps({"type": "message_stop"}), "message_stop", eol))
    return b"".join(out)


# --- Bedrock ----------------------------------------------------------------

CONVERSE_USAGE = {
    "inputTokens": 120,
    "outputTokens": 45,
    "totalTokens": 4261,
    "cacheReadInputTokens": 3000,
    "cacheWriteInputTokens": 1096,
    "cacheDetails": [{"ttl": "1h", "inputTokens": 1000}, {"ttl": "5m", "inputTokens": 96}],
}


def converse_stream(texts: list[str], *, usage: dict[str, Any] | None = CONVERSE_USAGE) -> bytes:
    out = [encode_event("messageStart", dumps({"role": "assistant"}))]
    for t in texts:
        out.append(encode_event("contentBlockDelta", dumps({"contentBlockIndex": 0, "delta": {"text": t}})))
    out.append(encode_event("contentBlockStop", dumps({"contentBlockIndex": 0})))
    out.append(encode_event("messageStop", dumps({"stopReason": "end_turn"})))
    if usage is not None:
        out.append(encode_event("metadata", dumps({"usage": usage, "metrics": {"latencyMs": 812}})))
    return b"".join(out)


def invoke_chunk(obj: dict[str, Any]) -> bytes:
    payload = dumps({"bytes": base64.b64encode(dumps(obj)).decode(), "p": "abcdefgh"})
    return encode_event("chunk", payload)


def invoke_stream_anthropic(texts: list[str], *, metrics: bool = True) -> bytes:
    start_usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 48, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 1,
    }
    msg = {"id": "msg_bdrk_1", "type": "message", "role": "assistant", "content": [], "usage": start_usage}
    out = [invoke_chunk({"type": "message_start", "message": msg})]
    for t in texts:
        out.append(
            invoke_chunk(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            )
        )
    out.append(
        invoke_chunk(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 77}}
        )
    )
    stop: dict[str, Any] = {"type": "message_stop"}
    if metrics:
        stop["amazon-bedrock-invocationMetrics"] = {
            "inputTokenCount": 12,
            "outputTokenCount": 77,
            "invocationLatency": 900,
            "firstByteLatency": 300,
            "cacheReadInputTokenCount": 0,
            "cacheWriteInputTokenCount": 2048,
        }
    out.append(invoke_chunk(stop))
    return b"".join(out)


def bedrock_exception(kind: str, message: str) -> bytes:
    return encode_exception(kind, dumps({"message": message}))
