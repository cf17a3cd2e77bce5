from __future__ import annotations

import base64
import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tests.simulator.wire_helpers import chunks, make_reply, outputs, sse
from tokenfuse.simulator import wire_openai


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


@given(outputs, chunks, st.integers(min_value=1, max_value=4), st.booleans())
def test_chat_stream_with_n_choices_sends_each_choice_whole(
    output: int, chunk: int, n: int, pad: bool
) -> None:
    base = make_reply(output, chunk)
    usage = replace(base.usage, output=output * n)
    reply = replace(base, usage=usage, choices=n)
    plan = wire_openai.chat_stream(reply, True, pad)
    chunks_ = [json.loads(data) for _, data in sse(plan.frames)[:-1]]
    texts: dict[int, str] = {}
    finished = set()
    for c in chunks_:
        assert len(c["choices"]) <= 1
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finished.add(choice["index"])
    assert texts == {i: reply.text for i in range(n)} and finished == set(range(n))
    assert chunks_[-1]["usage"]["completion_tokens"] == output * n
    assert plan.emitted[-1] == output * n
    # A broken stream delivers part of the answer, never the usage chunk.
    assert plan.emitted[plan.break_at - 1] <= output * n
    assert 1 <= plan.break_at < len(plan.frames) - 2


def test_chat_body_with_n_choices() -> None:
    base = make_reply(6)
    reply = replace(base, usage=replace(base.usage, output=18), choices=3, reasoning=0)
    body = json.loads(wire_openai.chat_body(reply))
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == reply.text for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 18
