from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.simulator.wire_helpers import chunks, decode_events, make_reply, outputs
from tokenfuse.simulator import wire_bedrock


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
