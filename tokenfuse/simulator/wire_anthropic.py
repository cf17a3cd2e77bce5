"""Anthropic Messages wire format: the message body and its event stream.

The same events, without ``ping`` and with ``message_delta`` carrying only
output tokens, are what Bedrock's InvokeModelWithResponseStream wraps in
``chunk`` frames for Claude models, so the event builder is shared.
"""

from __future__ import annotations

from typing import Any

from tokenfuse.simulator.reply import Reply, StreamPlan, Template, dumps, hole, jstr

# (event type, event JSON, output delivered once it is sent)
Event = tuple[str, bytes, int]


def error_body(kind: str, message: str, request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return dumps(body)


def usage(reply: Reply, output: int | None = None) -> dict[str, Any]:
    u = reply.usage
    out: dict[str, Any] = {
        "input_tokens": u.input_uncached,
        "cache_creation_input_tokens": u.cache_write + u.cache_write_1h,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write,
            "ephemeral_1h_input_tokens": u.cache_write_1h,
        },
        "output_tokens": u.output if output is None else output,
        "service_tier": "standard",
    }
    if reply.server_tool_use:
        out["server_tool_use"] = dict(reply.server_tool_use)
    return out


def _stop(reply: Reply) -> str:
    return "max_tokens" if reply.truncated else "end_turn"


def message(
    reply: Reply, content: list[dict[str, Any]] | None = None, **usage_override: int
) -> dict[str, Any]:
    return {
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}] if content is None else content,
        "stop_reason": _stop(reply) if content is None else None,
        "stop_sequence": None,
        "usage": usage(reply, **usage_override),
    }


def message_body(reply: Reply) -> bytes:
    return dumps(message(reply))


_DELTA = Template(
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": hole(0)}}
)


def events(reply: Reply, *, bedrock: bool = False) -> tuple[list[Event], int]:
    """The stream's events, and how many of them a broken stream delivers."""
    out: list[Event] = []
    start = {"type": "message_start", "message": message(reply, [], output=min(1, reply.usage.output))}
    out.append(("message_start", dumps(start), 0))
    if not bedrock:
        out.append(("ping", b'{"type":"ping"}', 0))
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    out.append(("content_block_start", dumps(block), 0))
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    cut = len(out)
    sent = 0
    for i, text in enumerate(deltas):
        sent += len(text.encode())
        out.append(("content_block_delta", _DELTA.fill(jstr(text)), (sent + 3) // 4))
        if i + 1 == half:
            cut = len(out)
    emitted = (sent + 3) // 4
    out.append(("content_block_stop", b'{"type":"content_block_stop","index":0}', emitted))
    # message_delta usage is cumulative: the whole answer's output so far.
    delta_usage: dict[str, Any] = {"output_tokens": reply.usage.output}
    if not bedrock:
        full = usage(reply)
        for key in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "server_tool_use",
        ):
            if key in full:
                delta_usage[key] = full[key]
    stop = {"type": "message_delta", "delta": {"stop_reason": _stop(reply), "stop_sequence": None}}
    out.append(("message_delta", dumps({**stop, "usage": delta_usage}), reply.usage.output))
    out.append(("message_stop", b'{"type":"message_stop"}', reply.usage.output))
    return out, cut


def message_stream(reply: Reply) -> StreamPlan:
    plan = StreamPlan()
    items, cut = events(reply)
    for kind, body, emitted in items:
        plan.add(b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n", emitted)
    plan.break_at = cut
    return plan
