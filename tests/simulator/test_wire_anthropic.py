from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given

from tests.simulator.wire_helpers import chunks, make_reply, outputs, sse
from tokenfuse.simulator import wire_anthropic


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


def test_server_tool_use_is_reported_in_body_and_stream() -> None:
    counters = {"web_search_requests": 1, "web_fetch_requests": 0}
    reply = replace(make_reply(5), server_tool_use=tuple(counters.items()))
    assert json.loads(wire_anthropic.message_body(reply))["usage"]["server_tool_use"] == counters
    bodies = [json.loads(data) for _, data in sse(wire_anthropic.message_stream(reply).frames)]
    delta = next(b for b in bodies if b["type"] == "message_delta")
    assert delta["usage"]["server_tool_use"] == counters
    assert "server_tool_use" not in json.loads(wire_anthropic.message_body(make_reply(5)))["usage"]
