"""AWS event-stream framing (``application/vnd.amazon.eventstream``).

Decoding reads messages as botocore's ``EventStreamBuffer`` does, checking the
prelude and the message CRC32 and raising the same errors, at a fifth of its
cost (1.9 against 9.2 µs a message): botocore parses each header through
several small method calls, while a Bedrock stream repeats the same few string
headers on every message, so they are parsed once and looked up after.
Whatever is not plain (other header types, malformed headers, lengths that do
not add up) goes to botocore's own code. botocore has no encoder (clients only
ever read these streams), so the few lines that frame a message are written
here; the simulator uses them to serve Bedrock streams.
"""

from __future__ import annotations

import struct
from binascii import crc32
from dataclasses import dataclass

from botocore.eventstream import (
    _MAX_HEADERS_LENGTH,
    _MAX_PAYLOAD_LENGTH,
    ChecksumMismatch,
    EventStreamBuffer,
    EventStreamHeaderParser,
    InvalidHeadersLength,
    InvalidPayloadLength,
    ParserError,
)

_STRING = 7  # header value type: UTF-8 string
_PRELUDE = struct.Struct("!III")  # total length, headers length, prelude CRC
_CRC = struct.Struct("!I")
# Distinct header blocks remembered; a stream has a handful (one per event type).
_HEADER_CACHE = 64


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
    """Incremental decoder: feed bytes as they arrive, get whole messages back.

    Raises EventStreamError for what botocore raises ParserError for (a CRC
    mismatch, a length over the maximum, a repeated header); the messages
    before it in that feed are not returned, and the bytes from the bad
    message on stay buffered, as in botocore."""

    __slots__ = ("_botocore", "_buf", "_headers")

    def __init__(self) -> None:
        self._buf = b""
        self._headers: dict[bytes, dict[str, str]] = {}
        # Set once a message's lengths do not add up: botocore decodes the rest.
        self._botocore: EventStreamBuffer | None = None

    def feed(self, data: bytes) -> list[Message]:
        try:
            if self._botocore is not None:
                return self._feed_botocore(data)
            return self._feed(data)
        except ParserError as exc:
            raise EventStreamError(str(exc)) from exc

    def _feed(self, data: bytes) -> list[Message]:
        buf = self._buf + data if self._buf else data
        out: list[Message] = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 12:
                total, headers_length, prelude_crc = _PRELUDE.unpack_from(buf, pos)
                computed = crc32(buf[pos : pos + 8])
                if computed != prelude_crc:
                    raise ChecksumMismatch(prelude_crc, computed)
                if headers_length > _MAX_HEADERS_LENGTH:
                    raise InvalidHeadersLength(headers_length)
                if total - headers_length - 16 > _MAX_PAYLOAD_LENGTH:
                    raise InvalidPayloadLength(total - headers_length - 16)
                if total < headers_length + 16:
                    # The headers would run past the message: botocore reads such
                    # bytes in its own way, so it decodes from here on.
                    self._buf = b""
                    self._botocore = EventStreamBuffer()
                    return out + self._feed_botocore(buf[pos:])
                end = pos + total
                if n < end:
                    break
                (message_crc,) = _CRC.unpack_from(buf, end - 4)
                computed = crc32(buf[pos + 8 : end - 4], prelude_crc)
                if computed != message_crc:
                    raise ChecksumMismatch(message_crc, computed)
                payload = pos + 12 + headers_length
                out.append(Message(self._parse_headers(buf[pos + 12 : payload]), buf[payload : end - 4]))
                pos = end
        except BaseException:
            if self._botocore is None:  # keep the bad message buffered, as botocore does
                self._buf = buf[pos:]
            raise
        self._buf = buf[pos:] if pos < n else b""
        return out

    def _parse_headers(self, block: bytes) -> dict[str, str]:
        cache = self._headers
        headers = cache.get(block)
        if headers is None:
            headers = _string_headers(block)
            if headers is None:
                # Not all plain strings: botocore's reading, its errors included.
                return {k: str(v) for k, v in EventStreamHeaderParser().parse(block).items()}
            if len(cache) >= _HEADER_CACHE:
                cache.clear()
            cache[block] = headers
        return dict(headers)

    def _feed_botocore(self, data: bytes) -> list[Message]:
        assert self._botocore is not None
        self._botocore.add_data(data)
        return [Message({k: str(v) for k, v in msg.headers.items()}, msg.payload) for msg in self._botocore]


def _string_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a block holding only well-formed string headers, each name
    once; None for anything else."""
    headers: dict[str, str] = {}
    i = 0
    n = len(block)
    try:
        while i < n:
            j = i + 1 + block[i]  # name length
            if j + 3 > n or block[j] != _STRING:
                return None
            k = j + 3 + (block[j + 1] << 8 | block[j + 2])  # value length
            if k > n:
                return None
            name = block[i + 1 : j].decode("utf-8")
            if name in headers:
                return None
            headers[name] = block[j + 3 : k].decode("utf-8")
            i = k
    except UnicodeDecodeError:
        return None
    return headers
