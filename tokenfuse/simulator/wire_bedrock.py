"""Bedrock runtime wire format: Converse bodies, ConverseStream events, and
the model-family bodies of InvokeModel (Anthropic Claude, Amazon Nova, Meta
Llama) with their ``chunk`` event streams and invocation metrics."""

from __future__ import annotations

import base64
from typing import Any

from tokenfuse.protocols.eventstream import encode_event
from tokenfuse.simulator import wire_anthropic
from tokenfuse.simulator.reply import Reply, StreamPlan, dumps, text_tokens

ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
# Real frames carry a random-length "p" field so that sizes leak nothing.
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _pad(n: int) -> str:
    return _PAD[: 4 + n % 40]


def error_headers(kind: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-amzn-errortype", (kind + ERROR_NAMESPACE).encode())]


def error_body(message: str) -> bytes:
    return dumps({"message": message})


def _stop(reply: Reply) -> str:
    return "max_tokens" if reply.truncated else "end_turn"


def converse_usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    write = u.cache_write + u.cache_write_1h
    out: dict[str, Any] = {
        "inputTokens": u.input_uncached,
        "outputTokens": u.output,
        "totalTokens": u.total,
        "cacheReadInputTokens": u.cache_read,
        "cacheWriteInputTokens": write,
    }
    if write:
        details = [("1h", u.cache_write_1h), ("5m", u.cache_write)]
        out["cacheDetails"] = [{"ttl": ttl, "inputTokens": n} for ttl, n in details if n]
    return out


def converse_body(reply: Reply) -> bytes:
    return dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
            "stopReason": _stop(reply),
            "usage": converse_usage(reply),
            "metrics": {"latencyMs": reply.latency_ms},
        }
    )


def converse_stream(reply: Reply) -> StreamPlan:
    plan = StreamPlan()
    n = 0

    def add(kind: str, payload: dict[str, Any], emitted: int) -> None:
        nonlocal n
        plan.add(encode_event(kind, dumps({**payload, "p": _pad(n)})), emitted)
        n += 1

    add("messageStart", {"role": "assistant"}, 0)
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    sent = ""
    for i, text in enumerate(deltas):
        sent += text
        add("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}, text_tokens(sent))
        if i + 1 == half:
            plan.mark_break()
    emitted = text_tokens(sent)
    add("contentBlockStop", {"contentBlockIndex": 0}, emitted)
    add("messageStop", {"stopReason": _stop(reply)}, emitted)
    metadata = {"usage": converse_usage(reply), "metrics": {"latencyMs": reply.latency_ms}}
    add("metadata", metadata, reply.usage.output)
    return plan


# --- InvokeModel model families --------------------------------------------


def invoke_headers(reply: Reply, cache_used: bool) -> list[tuple[bytes, bytes]]:
    u = reply.usage
    headers = [
        (b"x-amzn-bedrock-input-token-count", str(u.input_uncached).encode()),
        (b"x-amzn-bedrock-output-token-count", str(u.output).encode()),
        (b"x-amzn-bedrock-invocation-latency", str(reply.latency_ms).encode()),
    ]
    if cache_used:
        headers.append((b"x-amzn-bedrock-cache-read-input-token-count", str(u.cache_read).encode()))
        write = u.cache_write + u.cache_write_1h
        headers.append((b"x-amzn-bedrock-cache-write-input-token-count", str(write).encode()))
    return headers


def invocation_metrics(reply: Reply, first_byte_ms: int) -> dict[str, int]:
    u = reply.usage
    return {
        "inputTokenCount": u.input_uncached,
        "outputTokenCount": u.output,
        "invocationLatency": reply.latency_ms,
        "firstByteLatency": first_byte_ms,
        "cacheReadInputTokenCount": u.cache_read,
        "cacheWriteInputTokenCount": u.cache_write + u.cache_write_1h,
    }


def _nova_usage(reply: Reply) -> dict[str, int]:
    u = reply.usage
    return {
        "inputTokens": u.input_uncached,
        "outputTokens": u.output,
        "totalTokens": u.total,
        "cacheReadInputTokenCount": u.cache_read,
        "cacheWriteInputTokenCount": u.cache_write + u.cache_write_1h,
    }


def invoke_body(family: str, reply: Reply) -> bytes:
    if family == "anthropic":
        return wire_anthropic.message_body(reply)
    if family == "nova":
        return dumps(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
                "stopReason": _stop(reply),
                "usage": _nova_usage(reply),
            }
        )
    return dumps(
        {
            "generation": reply.text,
            "prompt_token_count": reply.usage.input_uncached,
            "generation_token_count": reply.usage.output,
            "stop_reason": "length" if reply.truncated else "stop",
        }
    )


def _family_events(family: str, reply: Reply) -> tuple[list[tuple[dict[str, Any], int]], int]:
    if family == "anthropic":
        return wire_anthropic.events(reply, bedrock=True)
    out: list[tuple[dict[str, Any], int]] = []
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    cut = 1
    sent = ""
    if family == "nova":
        out.append(({"messageStart": {"role": "assistant"}}, 0))
        for i, text in enumerate(deltas):
            sent += text
            out.append(
                ({"contentBlockDelta": {"delta": {"text": text}, "contentBlockIndex": 0}}, text_tokens(sent))
            )
            if i + 1 == half:
                cut = len(out)
        emitted = text_tokens(sent)
        out.append(({"contentBlockStop": {"contentBlockIndex": 0}}, emitted))
        out.append(({"messageStop": {"stopReason": _stop(reply)}}, emitted))
        usage = {"inputTokens": reply.usage.input_uncached, "outputTokens": reply.usage.output}
        out.append(({"metadata": {"usage": usage, "metrics": {}, "trace": {}}}, reply.usage.output))
        return out, cut
    # Llama: every chunk is a generation fragment; the last one carries counts.
    first = True
    for i, text in enumerate(deltas):
        sent += text
        chunk: dict[str, Any] = {
            "generation": text,
            "prompt_token_count": reply.usage.input_uncached if first else None,
            "generation_token_count": text_tokens(sent),
            "stop_reason": None,
        }
        first = False
        out.append((chunk, text_tokens(sent)))
        if i + 1 == half:
            cut = len(out)
    stop = "length" if reply.truncated else "stop"
    last = {"generation": "", "prompt_token_count": None, "generation_token_count": reply.usage.output}
    out.append(({**last, "stop_reason": stop}, reply.usage.output))
    return out, min(cut, len(out) - 1) or 1


def invoke_stream(family: str, reply: Reply, first_byte_ms: int) -> StreamPlan:
    items, cut = _family_events(family, reply)
    plan = StreamPlan()
    last = len(items) - 1
    for i, (event, emitted) in enumerate(items):
        if i == last:
            event = {**event, "amazon-bedrock-invocationMetrics": invocation_metrics(reply, first_byte_ms)}
        payload = {"bytes": base64.b64encode(dumps(event)).decode(), "p": _pad(i)}
        plan.add(encode_event("chunk", dumps(payload)), emitted)
    plan.break_at = cut
    return plan
