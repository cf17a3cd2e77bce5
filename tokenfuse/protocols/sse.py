"""Incremental Server-Sent Events parser (the WHATWG event-stream grammar).

Feed bytes as they arrive, split anywhere; get back whole events. Lines end in
``\\n``, ``\\r\\n`` or a lone ``\\r``; ``:`` lines are comments; several
``data:`` lines join with ``\\n``; a blank line ends an event. Each event
carries the exact bytes it spanned (when asked), so a meter can drop or
rewrite one event and forward the rest untouched: the spans of all events
plus `pending` always add up to the bytes fed.

`SSEParser.feed_simple` is the fast path the stream meters take first: the
shape nearly every provider sends (``data:`` lines, each event one line, maybe
after one ``event:`` line, ``\\n`` endings) is split with a few `find`s and no
per-event objects; anything else goes to `feed`, with the same result.
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


# One event read by `feed_simple`: its `event:` value or None, and where its
# `data:` value starts and ends in the bytes `feed_simple` returns.
SimpleEvent = tuple[bytes | None, int, int]


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

    def feed_simple(self, chunk: bytes) -> tuple[bytes, list[SimpleEvent]] | None:
        """`feed` for the common shape, without SSEEvent objects.

        Simple events: an optional ``event:`` line, then one ``data:`` line, then
        a blank line, ``\\n`` line endings only. When every event `chunk`
        completes is simple, returns the bytes they lie in (the pending bytes
        followed by `chunk`) and, per event, its `event:` value or None and the
        offsets of its `data:` value (what `feed` gives: one leading space
        removed). An event's raw bytes run from the end of the one before (0 for
        the first) to its data end + 2. The bytes after the last event become
        pending. Returns None, having consumed nothing, when the chunk completes
        no event, holds a ``\\r`` or an event of another shape: call `feed`."""
        buf = self._buf
        if not buf:
            # The most common chunks of all: one event, of one `data:` line, or
            # of an `event:` line and a `data:` line.
            last = len(chunk) - 2
            nl = chunk.find(b"\n")
            if nl == last:
                if chunk[-1] == 10 and 13 not in chunk and chunk.startswith(b"data:"):
                    return chunk, [(None, 6 if chunk[5] == 32 else 5, nl)]
                return None
            if (
                0 <= nl
                and chunk.find(b"\n", nl + 1) == last
                and chunk[-1] == 10
                and chunk.startswith(b"event:")
                and chunk.startswith(b"data:", nl + 1)
                and 13 not in chunk
            ):
                event = chunk[7 if chunk[6] == 32 else 6 : nl]
                return chunk, [(event, nl + 7 if chunk[nl + 6] == 32 else nl + 6, last)]
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            if not (buf and buf[-1] == 10 and chunk[:1] == b"\n"):
                return None
            cut = -1  # the blank line begins in the pending bytes
        if buf:
            # The pending bytes begin an event (feed keeps nothing before one), so
            # parsing them again from the start gives the state feed holds.
            data = bytes(buf) + chunk
            cut += len(buf) + 2
        else:
            data = chunk
            cut += 2
        if 13 in data:
            return None
        events: list[SimpleEvent] = []
        find = data.find
        startswith = data.startswith
        pos = 0
        # Every find below succeeds before `cut`, where data ends in \n\n, and a
        # line that matched a prefix ends after it.
        while pos < cut:
            name: bytes | None = None
            if data[pos] == 101 and startswith(b"event:", pos):  # 'e'
                nl = find(b"\n", pos)
                name = data[pos + 7 if data[pos + 6] == 32 else pos + 6 : nl]
                pos = nl + 1
            if not startswith(b"data:", pos):
                return None
            nl = find(b"\n", pos)
            if data[nl + 1] != 10:  # another line follows: a multi-line event
                return None
            events.append((name, pos + 6 if data[pos + 5] == 32 else pos + 5, nl))
            pos = nl + 2
        if buf or cut < len(data):
            # The rest begins an event; `feed` splits its lines when more comes.
            self._buf = bytearray(data[cut:])
            self._start = self._pos = 0
            self._data = []
            self._event = None
        return data, events

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
