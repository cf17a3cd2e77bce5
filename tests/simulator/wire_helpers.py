"""Builders' output read back with independent minimal parsers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tokenfuse.protocols.eventstream import EventStreamDecoder
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


def decode_events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(b"".join(frames))
    assert len(messages) == len(frames)
    return [(m.headers[":event-type"], json.loads(m.payload)) for m in messages]


outputs = st.integers(min_value=0, max_value=60)
chunks = st.integers(min_value=1, max_value=9)
