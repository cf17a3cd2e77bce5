"""AWS event-stream framing (``application/vnd.amazon.eventstream``).

Decoding uses botocore's ``EventStreamBuffer``, which checks both the prelude
and the message CRC32. botocore has no encoder (clients only ever read these
streams), so the few lines that frame a message are written here; the
simulator uses them to serve Bedrock streams.
"""

from __future__ import annotations

import struct
from binascii import crc32
from dataclasses import dataclass

from botocore.eventstream import EventStreamBuffer, ParserError

_STRING = 7  # header value type: UTF-8 string


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad length or CRC)."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, str]
    payload: bytes


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    head = bytearray()
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        head += struct.pack("!B", len(n)) + n + struct.pack("!BH", _STRING, len(v)) + v
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", crc32(prelude))
    body = prelude + bytes(head) + payload
    return body + struct.pack("!I", crc32(body))


def encode_event(event_type: str, payload: bytes) -> bytes:
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload
    )


def encode_exception(exception_type: str, payload: bytes) -> bytes:
    return encode_message(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        payload,
    )


class EventStreamDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole messages back."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer.add_data(data)
        out: list[Message] = []
        try:
            for msg in self._buffer:
                out.append(Message({k: str(v) for k, v in msg.headers.items()}, msg.payload))
        except ParserError as exc:
            raise EventStreamError(str(exc)) from exc
        return out
