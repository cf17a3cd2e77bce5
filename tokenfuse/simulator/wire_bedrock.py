"""Bedrock runtime wire format: Converse bodies, ConverseStream events, and
the model-family bodies of InvokeModel (Anthropic Claude, Amazon Nova, Meta
Llama) with their ``chunk`` event streams and invocation metrics."""

from __future__ import annotations

import base64
from typing import Any

from tokenfuse.protocols.eventstream import encode_event
from tokenfuse.simulator import wire_anthropic
from tokenfuse.simulator.reply import Reply, StreamPlan, Template, dumps, hole, jstr

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


_CONVERSE_DELTA = Template({"contentBlockIndex": 0, "delta": {"text": hole(0)}, "p": hole(1)})


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
    sent = 0
    for i, text in enumerate(deltas):
        sent += len(text.encode())
        payload = _CONVERSE_DELTA.fill(jstr(text), jstr(_pad(n)))
        plan.add(encode_event("contentBlockDelta", payload), (sent + 3) // 4)
        n += 1
        if i + 1 == half:
            plan.mark_break()
    emitted = (sent + 3) // 4
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


_NOVA_DELTA = Template({"contentBlockDelta": {"delta": {"text": hole(0)}, "contentBlockIndex": 0}})
_LLAMA_CHUNK = Template(
    {
        "generation": hole(0),
        "prompt_token_count": hole(1),
        "generation_token_count": hole(2),
        "stop_reason": None,
    }
)


def _family_events(family: str, reply: Reply) -> tuple[list[tuple[bytes, int]], int]:
    """Model events as JSON with the output delivered after each, and how
    many a broken stream delivers."""
    if family == "anthropic":
        items, cut = wire_anthropic.events(reply, bedrock=True)
        return [(body, emitted) for _, body, emitted in items], cut
    out: list[tuple[bytes, int]] = []
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    cut = 1
    sent = 0
    if family == "nova":
        out.append((b'{"messageStart":{"role":"assistant"}}', 0))
        for i, text in enumerate(deltas):
            sent += len(text.encode())
            out.append((_NOVA_DELTA.fill(jstr(text)), (sent + 3) // 4))
            if i + 1 == half:
                cut = len(out)
        emitted = (sent + 3) // 4
        out.append((b'{"contentBlockStop":{"contentBlockIndex":0}}', emitted))
        out.append((dumps({"messageStop": {"stopReason": _stop(reply)}}), emitted))
        usage = {"inputTokens": reply.usage.input_uncached, "outputTokens": reply.usage.output}
        out.append((dumps({"metadata": {"usage": usage, "metrics": {}, "trace": {}}}), reply.usage.output))
        return out, cut
    # Llama: every chunk is a generation fragment; the last one carries counts.
    for i, text in enumerate(deltas):
        sent += len(text.encode())
        prompt = str(reply.usage.input_uncached).encode() if i == 0 else b"null"
        tokens = (sent + 3) // 4
        out.append((_LLAMA_CHUNK.fill(jstr(text), prompt, str(tokens).encode()), tokens))
        if i + 1 == half:
            cut = len(out)
    stop = "length" if reply.truncated else "stop"
    last = {"generation": "", "prompt_token_count": None, "generation_token_count": reply.usage.output}
    out.append((dumps({**last, "stop_reason": stop}), reply.usage.output))
    return out, min(cut, len(out) - 1) or 1


def invoke_stream(family: str, reply: Reply, first_byte_ms: int) -> StreamPlan:
    items, cut = _family_events(family, reply)
    plan = StreamPlan()
    last = len(items) - 1
    for i, (event, emitted) in enumerate(items):
        if i == last:
            metrics = dumps(invocation_metrics(reply, first_byte_ms))
            event = event[:-1] + b',"amazon-bedrock-invocationMetrics":' + metrics + b"}"
        payload = b'{"bytes":"' + base64.b64encode(event) + b'","p":' + jstr(_pad(i)) + b"}"
        plan.add(encode_event("chunk", payload), emitted)
    plan.break_at = cut
    return plan
