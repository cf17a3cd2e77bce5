"""OpenAI wire format: Chat Completions, Responses and Embeddings bodies and
their server-sent-event streams, as the OpenAI API puts them on the wire."""

from __future__ import annotations

import base64
import math
import struct
from functools import lru_cache
from typing import Any

from tokenfuse.simulator.reply import Reply, StreamPlan, Template, dumps, hole, jstr

_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_tokenfuse_sim"
_OBFUSCATION = "Zk3pQx9LmT2vWb7Rn4Hs"


def obfuscation(index: int) -> str:
    """Padding the API adds to delta events so their sizes leak nothing; real
    padding is random, this one is deterministic so streams can be compared."""
    return _OBFUSCATION[: 1 + index % len(_OBFUSCATION)]


def _data(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


def _event(kind: str, value: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(value) + b"\n\n"


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


# --- Chat Completions ------------------------------------------------------


def chat_usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    prompt = u.input_uncached + u.cache_read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output,
        "total_tokens": prompt + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(reply: Reply) -> str:
    return "length" if reply.truncated else "stop"


def chat_body(reply: Reply) -> bytes:
    return dumps(
        {
            "id": reply.id,
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": _finish(reply),
                }
                for index in range(reply.choices)
            ],
            "usage": chat_usage(reply),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
    )


def chat_stream(reply: Reply, include_usage: bool, include_obfuscation: bool = True) -> StreamPlan:
    def chunk(
        choices: list[dict[str, Any]], usage: dict[str, Any] | None = None, pad: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": choices,
        }
        # With include_usage every chunk carries "usage": null until the last.
        if include_usage:
            body["usage"] = usage
        if pad is not None:
            body["obfuscation"] = pad
        return body

    def choice(delta: dict[str, Any], finish: str | None = None, index: Any = 0) -> list[dict[str, Any]]:
        return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]

    # With n > 1 every chunk carries one choice, told apart by its index.
    indices = range(reply.choices)
    plan = StreamPlan()
    for c in indices:
        plan.add(_data(chunk(choice({"role": "assistant", "content": "", "refusal": None}, index=c))), 0)
    # Holes must be numbered without gaps: the padding, which may be absent, is last.
    pad = hole(2) if include_obfuscation else None
    delta = Template(chunk(choice({"content": hole(0)}, index=hole(1)), pad=pad), b"data: ", b"\n\n")
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    sent = 0
    for i, text in enumerate(deltas):
        size = len(text.encode())
        for c in indices:
            sent += size
            plan.add(delta.fill(jstr(text), str(c).encode(), jstr(obfuscation(i))), (sent + 3) // 4)
        if i + 1 == half:
            plan.mark_break()
    emitted = (sent + 3) // 4
    for c in indices:
        plan.add(_data(chunk(choice({}, _finish(reply), index=c))), emitted)
    if include_usage:
        plan.add(_data(chunk([], chat_usage(reply))), reply.usage.output)
    plan.add(_DONE, plan.emitted[-1])
    return plan


# --- Responses -------------------------------------------------------------


def responses_usage(reply: Reply) -> dict[str, Any]:
    u = reply.usage
    prompt = u.input_uncached + u.cache_read
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning},
        "total_tokens": prompt + u.output,
    }


def _message_item(reply: Reply, done: bool) -> dict[str, Any]:
    return {
        "id": "msg_" + reply.id[5:],
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": [_text_part(reply.text)] if done else [],
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response(reply: Reply, request: dict[str, Any], state: str) -> dict[str, Any]:
    done = state != "in_progress"
    return {
        "id": reply.id,
        "object": "response",
        "created_at": reply.created,
        "status": state,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": reply.model,
        "output": [_message_item(reply, True)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": request.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": responses_usage(reply) if done else None,
        "user": None,
        "metadata": request.get("metadata") or {},
    }


def _final_state(reply: Reply) -> str:
    return "incomplete" if reply.truncated else "completed"


def responses_body(reply: Reply, request: dict[str, Any]) -> bytes:
    return dumps(_response(reply, request, _final_state(reply)))


def responses_stream(reply: Reply, request: dict[str, Any], include_obfuscation: bool = True) -> StreamPlan:
    plan = StreamPlan()
    seq = 0
    item_id = "msg_" + reply.id[5:]

    def add(kind: str, fields: dict[str, Any], emitted: int) -> None:
        nonlocal seq
        plan.add(_event(kind, {"type": kind, "sequence_number": seq, **fields}), emitted)
        seq += 1

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    add("response.created", {"response": _response(reply, request, "in_progress")}, 0)
    add("response.in_progress", {"response": _response(reply, request, "in_progress")}, 0)
    add("response.output_item.added", {"output_index": 0, "item": _message_item(reply, False)}, 0)
    add("response.content_part.added", {**where, "part": _text_part("")}, 0)
    fields: dict[str, Any] = {"type": "response.output_text.delta", "sequence_number": hole(0), **where}
    fields.update({"delta": hole(1), "logprobs": []})
    if include_obfuscation:
        fields["obfuscation"] = hole(2)
    delta = Template(fields, b"event: response.output_text.delta\ndata: ", b"\n\n")
    deltas = reply.deltas()
    half = (len(deltas) + 1) // 2
    sent = 0
    for i, text in enumerate(deltas):
        sent += len(text.encode())
        plan.add(delta.fill(str(seq).encode(), jstr(text), jstr(obfuscation(i))), (sent + 3) // 4)
        seq += 1
        if i + 1 == half:
            plan.mark_break()
    emitted = (sent + 3) // 4
    add("response.output_text.done", {**where, "text": reply.text, "logprobs": []}, emitted)
    add("response.content_part.done", {**where, "part": _text_part(reply.text)}, emitted)
    add("response.output_item.done", {"output_index": 0, "item": _message_item(reply, True)}, emitted)
    state = _final_state(reply)
    add(f"response.{state}", {"response": _response(reply, request, state)}, reply.usage.output)
    return plan


# --- Embeddings ------------------------------------------------------------


@lru_cache(maxsize=64)
def _vector(dimensions: int) -> tuple[list[float], str]:
    raw = [math.sin(i + 1.0) for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    values = [round(v / norm, 6) for v in raw]
    packed = struct.pack(f"<{dimensions}f", *values)
    return values, base64.b64encode(packed).decode()


def embeddings_body(model: str, tokens: int, count: int, dimensions: int, base64_format: bool) -> bytes:
    values, packed = _vector(dimensions)
    embedding: Any = packed if base64_format else values
    return dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": embedding} for i in range(count)],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
