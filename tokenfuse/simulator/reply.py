"""One simulated model answer, and the shape every stream builder returns.

Builders are pure: they turn a :class:`Reply` into response bytes, so the wire
formats can be tested without a server and the app only paces and sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from tokenfuse.usage import Usage


@dataclass(frozen=True, slots=True)
class Reply:
    id: str
    model: str
    usage: Usage
    text: str
    # Output tokens spent on hidden reasoning: billed as output, never streamed.
    reasoning: int = 0
    # True when the output limit stopped the answer.
    truncated: bool = False
    chunk_tokens: int = 4
    created: int = 0
    latency_ms: int = 0
    # OpenAI Chat `n`: each choice is ``text``; ``usage`` and ``reasoning``
    # cover all of them.
    choices: int = 1
    # Server-side tool uses, as Anthropic's usage.server_tool_use counters.
    server_tool_use: tuple[tuple[str, int], ...] = ()

    def deltas(self) -> list[str]:
        step = 4 * max(1, self.chunk_tokens)
        return [self.text[i : i + step] for i in range(0, len(self.text), step)]


@dataclass(slots=True)
class StreamPlan:
    """The frames of a stream, in order.

    ``emitted[i]`` is the output the client has received once ``frames[i]`` is
    sent; ``break_at`` is how many frames a broken stream delivers (always
    fewer than the frames that carry the final usage).
    """

    frames: list[bytes] = field(default_factory=list)
    emitted: list[int] = field(default_factory=list)
    break_at: int = 1

    def add(self, frame: bytes, emitted: int) -> None:
        self.frames.append(frame)
        self.emitted.append(emitted)

    def mark_break(self) -> None:
        self.break_at = max(1, len(self.frames))


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def jstr(text: str) -> bytes:
    """A JSON string literal, quotes included, as :func:`dumps` writes it."""
    literal: str = encode_basestring(text)
    return literal.encode()


def hole(index: int) -> str:
    """A placeholder value for :class:`Template`."""
    return f"\x00hole{index}\x00"


class Template:
    """JSON serialised once with placeholder values, then filled per frame.

    Stream frames differ only in a few values (the delta text, a sequence
    number); re-serialising the whole envelope for every delta was most of the
    cost of a stream.
    """

    __slots__ = ("_order", "_parts")

    def __init__(self, value: Any, prefix: bytes = b"", suffix: bytes = b"") -> None:
        raw = prefix + dumps(value) + suffix
        found: list[tuple[int, int, int]] = []
        index = 0
        while True:
            marker = dumps(hole(index))
            at = raw.find(marker)
            if at < 0:
                break
            found.append((at, index, len(marker)))
            index += 1
        found.sort()
        self._parts: list[bytes] = []
        self._order: list[int] = []
        pos = 0
        for at, i, size in found:
            self._parts.append(raw[pos:at])
            self._order.append(i)
            pos = at + size
        self._parts.append(raw[pos:])

    def fill(self, *values: bytes) -> bytes:
        """``values[i]`` (JSON bytes: use :func:`jstr` for strings) replaces hole ``i``."""
        out = [self._parts[0]]
        for k, i in enumerate(self._order):
            out.append(values[i])
            out.append(self._parts[k + 1])
        return b"".join(out)
