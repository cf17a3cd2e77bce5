"""The stream builders, read back with independent minimal parsers."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.protocols.eventstream import EventStreamDecoder
from tokenfuse.simulator import wire_anthropic, wire_bedrock, wire_openai
from tokenfuse.simulator.reply import Reply
from tokenfuse.simulator.tokens import generated_text
from tokenfuse.usage import Usage


def make_reply(output: int = 10, chunk: int = 3, reasoning: int = 0, truncated: bool = False) -> Reply:
    usage = Usage(input_uncached=7, cache_read=5, cache_write=3, cache_write_1h=2, output=output)
    return Reply(
        id="resp_abc",
        model="m",
        usage=usage,
        text=generated_text(output - reasoning),
        reasoning=reasoning,
        truncated=truncated,
        chunk_tokens=chunk,
        latency_ms=12,
    )


def sse(frames: list[bytes]) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for frame in frames:
        assert frame.endswith(b"\n\n")
        event: str | None = None
        data = ""
        for line in frame.decode().strip("\n").split("\n"):
            key, _, value = line.partition(": ")
            if key == "event":
                event = value
            else:
                assert key == "data"
                data = value
        out.append((event, data))
    return out


outputs = st.integers(min_value=0, max_value=60)
chunks = st.integers(min_value=1, max_value=9)


@given(outputs, chunks, st.booleans(), st.booleans())
def test_chat_stream_reassembles_and_reports_usage_only_when_asked(
    output: int, chunk: int, ask: bool, pad: bool
) -> None:
    reply = make_reply(output, chunk)
    plan = wire_openai.chat_stream(reply, ask, pad)
    events = sse(plan.frames)
    assert events[-1] == (None, "[DONE]")
    chunks_ = [json.loads(data) for _, data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks_ if c["choices"])
    assert text == reply.text
    usage_chunks = [c for c in chunks_ if c.get("usage")]
    if ask:
        assert all("usage" in c for c in chunks_)
        assert usage_chunks == [chunks_[-1]]
        assert chunks_[-1]["choices"] == []
        usage = chunks_[-1]["usage"]
        assert usage["prompt_tokens"] == 12  # includes the 5 cached
        assert usage["prompt_tokens_details"]["cached_tokens"] == 5
        assert usage["completion_tokens"] == output
        assert plan.break_at < len(plan.frames) - 2
    else:
        assert usage_chunks == []
        assert all("usage" not in c for c in chunks_)
    assert plan.emitted[-1] == output
    assert 1 <= plan.break_at < len(plan.frames)
    padded = [c for c in chunks_ if "obfuscation" in c]
    assert len(padded) == (len(reply.deltas()) if pad else 0)


def test_chat_body_counts_reasoning_inside_completion_tokens() -> None:
    body = json.loads(wire_openai.chat_body(make_reply(10, reasoning=4, truncated=True)))
    assert body["usage"]["completion_tokens"] == 10
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
    assert len(body["choices"][0]["message"]["content"]) == 24
    assert body["choices"][0]["finish_reason"] == "length"


@given(outputs, chunks, st.booleans())
def test_responses_stream_is_typed_and_sequenced(output: int, chunk: int, truncated: bool) -> None:
    reply = make_reply(output, chunk, truncated=truncated)
    events = sse(wire_openai.responses_stream(reply, {"input": "x"}).frames)
    bodies = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [b["type"] for b in bodies]
    assert [b["sequence_number"] for b in bodies] == list(range(len(bodies)))
    assert bodies[0]["type"] == "response.created"
    assert "".join(b["delta"] for b in bodies if b["type"] == "response.output_text.delta") == reply.text
    final = bodies[-1]
    assert final["type"] == ("response.incomplete" if truncated else "response.completed")
    usage = final["response"]["usage"]
    assert usage == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12 + output,
    }


def test_embeddings_body_encodes_base64_float32() -> None:
    body = json.loads(wire_openai.embeddings_body("e", 9, 2, 4, True))
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(base64.b64decode(body["data"][0]["embedding"])) == 16
    plain = json.loads(wire_openai.embeddings_body("e", 9, 1, 4, False))
    assert len(plain["data"][0]["embedding"]) == 4


@given(outputs, chunks)
def test_anthropic_stream_usage_is_cumulative_and_break_precedes_it(output: int, chunk: int) -> None:
    reply = make_reply(output, chunk)
    plan = wire_anthropic.message_stream(reply)
    events = sse(plan.frames)
    bodies = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [b["type"] for b in bodies]
    start = bodies[0]["message"]["usage"]
    assert start["input_tokens"] == 7
    assert start["cache_read_input_tokens"] == 5
    assert start["cache_creation_input_tokens"] == 5
    assert start["cache_creation"] == {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 2}
    assert start["output_tokens"] == min(1, output)
    assert bodies[1]["type"] == "ping"
    text = "".join(b["delta"]["text"] for b in bodies if b["type"] == "content_block_delta")
    assert text == reply.text
    delta = next(b for b in bodies if b["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == output
    assert bodies[-1]["type"] == "message_stop"
    assert plan.break_at <= len(bodies) - 3


def decode_events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(b"".join(frames))
    assert len(messages) == len(frames)
    return [(m.headers[":event-type"], json.loads(m.payload)) for m in messages]


@given(outputs, chunks)
def test_converse_stream_frames_carry_usage_in_metadata(output: int, chunk: int) -> None:
    reply = make_reply(output, chunk)
    events = decode_events(wire_bedrock.converse_stream(reply).frames)
    names = [name for name, _ in events]
    assert names[0] == "messageStart" and names[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(p["delta"]["text"] for n, p in events if n == "contentBlockDelta")
    assert text == reply.text
    usage = events[-1][1]["usage"]
    assert usage["inputTokens"] == 7
    assert usage["cacheReadInputTokens"] == 5
    assert usage["cacheWriteInputTokens"] == 5
    assert usage["outputTokens"] == output
    assert usage["totalTokens"] == 17 + output
    assert usage["cacheDetails"] == [{"ttl": "1h", "inputTokens": 2}, {"ttl": "5m", "inputTokens": 3}]
    assert events[-1][1]["metrics"] == {"latencyMs": 12}


@given(st.sampled_from(["anthropic", "nova", "llama"]), st.integers(min_value=1, max_value=40), chunks)
def test_invoke_stream_chunks_end_with_invocation_metrics(family: str, output: int, chunk: int) -> None:
    reply = make_reply(output, chunk)
    plan = wire_bedrock.invoke_stream(family, reply, 5)
    events = decode_events(plan.frames)
    assert {name for name, _ in events} == {"chunk"}
    payloads = [json.loads(base64.b64decode(p["bytes"])) for _, p in events]
    metrics = payloads[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics == {
        "inputTokenCount": 7,
        "outputTokenCount": output,
        "invocationLatency": 12,
        "firstByteLatency": 5,
        "cacheReadInputTokenCount": 5,
        "cacheWriteInputTokenCount": 5,
    }
    assert all("amazon-bedrock-invocationMetrics" not in p for p in payloads[:-1])
    assert plan.break_at < len(plan.frames)
    if family == "anthropic":
        text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
        assert all(p["type"] != "ping" for p in payloads)
    elif family == "nova":
        text = "".join(p["contentBlockDelta"]["delta"]["text"] for p in payloads if "contentBlockDelta" in p)
    else:
        text = "".join(p["generation"] for p in payloads)
        assert payloads[-1]["generation_token_count"] == output
    assert text == reply.text


def test_invoke_bodies_per_family() -> None:
    reply = make_reply(4)
    anthropic = json.loads(wire_bedrock.invoke_body("anthropic", reply))
    assert anthropic["usage"]["input_tokens"] == 7 and anthropic["usage"]["output_tokens"] == 4
    nova = json.loads(wire_bedrock.invoke_body("nova", reply))
    assert nova["usage"]["cacheReadInputTokenCount"] == 5
    assert nova["output"]["message"]["content"][0]["text"] == reply.text
    llama = json.loads(wire_bedrock.invoke_body("llama", reply))
    assert (llama["prompt_token_count"], llama["generation_token_count"]) == (7, 4)
    headers = dict(wire_bedrock.invoke_headers(reply, cache_used=True))
    assert headers[b"x-amzn-bedrock-input-token-count"] == b"7"
    assert headers[b"x-amzn-bedrock-cache-write-input-token-count"] == b"5"
    assert b"x-amzn-bedrock-cache-read-input-token-count" not in dict(
        wire_bedrock.invoke_headers(reply, False)
    )
