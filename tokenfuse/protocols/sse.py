"""Incremental Server-Sent Events parser (the WHATWG event-stream grammar).

Feed bytes as they arrive, split anywhere; get back whole events. Lines end in
``\\n``, ``\\r\\n`` or a lone ``\\r``; ``:`` lines are comments; several
``data:`` lines join with ``\\n``; a blank line ends an event. Each event
carries the exact bytes it spanned (when asked), so a meter can drop or
rewrite one event and forward the rest untouched: the spans of all events
plus `pending` always add up to the bytes fed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    event: bytes | None  # the `event:` field, if any
    data: bytes | None  # `data:` lines joined with b"\n"; None when the event had none
    raw: bytes  # the exact bytes of the event, blank line included (b"" unless keep_raw)


class SSEParser:
    __slots__ = ("_buf", "_cr", "_data", "_event", "_keep_raw", "_pos", "_start")

    def __init__(self, *, keep_raw: bool = False) -> None:
        self._keep_raw = keep_raw
        self._buf = bytearray()
        self._start = 0  # where the current (incomplete) event begins in _buf
        self._pos = 0  # first byte of _buf not yet split into lines
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._cr = False  # once a \r is seen, lines split on all three endings

    @property
    def pending(self) -> bytes:
        """Bytes fed that do not yet belong to a complete event."""
        return bytes(self._buf[self._start :])

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        out: list[SSEEvent] = []
        pos = self._pos
        n = len(buf)
        if not self._cr and 13 in chunk:
            self._cr = True
        cr = self._cr
        while True:
            if cr:
                m = _EOL.search(buf, pos)
                if m is None:
                    break
                i, after = m.start(), m.end()
                # A final lone \r may be the first half of \r\n: wait for the next byte.
                if after == n and i + 1 == n and buf[i] == 13:
                    break
            else:
                i = buf.find(b"\n", pos)
                if i < 0:
                    break
                after = i + 1
            line = buf[pos:i]
            pos = after
            if not line:
                out.append(self._dispatch(buf, pos))
            else:
                self._field(bytes(line))
        self._pos = pos
        if self._start:
            del buf[: self._start]
            self._pos -= self._start
            self._start = 0
        return out

    def finish(self) -> list[SSEEvent]:
        """End of stream: a trailing lone \\r ends its line. An event with no
        closing blank line is discarded, as the SSE grammar requires; its bytes
        stay in `pending`."""
        buf = self._buf
        if self._pos < len(buf) and buf.endswith(b"\r"):
            line = buf[self._pos : len(buf) - 1]
            self._pos = len(buf)
            if not line:
                return [self._dispatch(buf, self._pos)]
            self._field(bytes(line))
        return []

    def _dispatch(self, buf: bytearray, end: int) -> SSEEvent:
        raw = bytes(buf[self._start : end]) if self._keep_raw else b""
        data = b"\n".join(self._data) if self._data else None
        ev = SSEEvent(self._event, data, raw)
        self._start = end
        self._data = []
        self._event = None
        return ev

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
