"""Limits on what one client can make the gateway hold: time to send headers and
body, header size, open connections in total and per client address.

uvicorn bounds keep-alive idleness, concurrency (at the point headers arrive) and
graceful shutdown, and `serve.py` configures those. It has no header or body read
timeout and no size limit on httptools' header buffer, so a trickling client held a
connection, its buffers and a file descriptor forever. :class:`LimitedHttpProtocol`
closes that gap as a subclass of uvicorn's httptools protocol: it arms one timer
per phase (headers, then body) on the parser callbacks and refuses connections over
the caps the moment they are accepted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from tokenfuse.config import ServerConfig

log = logging.getLogger("tokenfuse.gateway")

# Upper bound on max_connections when it is derived from the open-file limit: the
# rest of the descriptors are for upstream sockets, the ledger and logs.
AUTO_MAX_CONNECTIONS = 10_000
# A refused connection is kept half-closed this long so the client reads the
# answer instead of a reset for the request it already sent.
REFUSE_LINGER_S = 1.0
# Refusals come in floods; one warning per interval says how many.
REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int
    max_connections_per_client: int | None

    @classmethod
    def from_config(cls, server: ServerConfig, open_files: int | None) -> ServerLimits:
        return cls(
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
            max_header_bytes=server.max_header_bytes,
            max_connections=server.max_connections or default_max_connections(open_files),
            max_connections_per_client=server.max_connections_per_client,
        )


def open_file_limit() -> int | None:
    """The process's soft RLIMIT_NOFILE, or None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(open_files: int | None) -> int:
    if open_files is None:
        return AUTO_MAX_CONNECTIONS
    return max(16, min(AUTO_MAX_CONNECTIONS, open_files // 2))


def open_file_warning(max_connections: int, open_files: int | None) -> str | None:
    """A start-up warning when max_connections leaves too few descriptors for the rest."""
    if open_files is None or max_connections <= open_files * 0.8:
        return None
    return (
        f"server.max_connections is {max_connections} but this process may open only {open_files} files "
        f"(ulimit -n); upstream sockets and the ledger need descriptors too, so under load new connections "
        f"will fail with 'too many open files'. Raise the limit (ulimit -n, LimitNOFILE= in systemd) or set "
        f"server.max_connections to at most {int(open_files * 0.8)}."
    )


def error_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection.

    The body is read correctly by both the OpenAI (``error.message``) and the
    Anthropic (``type: error``, ``error.type``) SDKs; at this level the request's
    route, and so the caller's protocol, is not known yet.
    """
    body = json.dumps(
        {"type": "error", "error": {"type": code, "code": code, "message": message}}, separators=(",", ":")
    ).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _HeadersTooLarge(Exception):
    pass


class _Held:
    """Stands in for the transport while uvicorn writes a response head, to hold it."""

    __slots__ = ("closed", "data")

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True  # a connection without keep-alive: closed once the bytes are out

    def is_closing(self) -> bool:
        return False


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request cycle, writing a whole response's head and body in one write.

    A response with a content-length (every non-streaming answer) is otherwise two
    socket writes: the head at ``http.response.start``, the body next. Holding the
    head until the body saves a system call per request. A chunked response (a
    stream) gets its head at once: a client may be waiting on the status while the
    provider thinks.
    """

    _held: bytes | None = None

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            # Wait here, not inside uvicorn's send, so that the stand-in is never in
            # place across an await (the app may call receive() meanwhile).
            await self.flow.drain()
        if message["type"] == "http.response.start" and not self.response_started:
            transport, held = self.transport, _Held()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if self.chunked_encoding is False and self.scope["method"] != "HEAD":
                self._held = held.data
            elif held.data:
                transport.write(held.data)
            return
        head = self._held
        if head is None:
            await super().send(message)
            return
        self._held = None
        transport, held = self.transport, _Held(head)
        self.transport = held  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
        if held.data and not self.disconnected:
            transport.write(held.data)
        if held.closed:
            transport.close()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read timeouts and connection caps.

    Built per server by :func:`protocol_for`, which binds the limits and a fresh
    per-address connection table as class attributes (uvicorn instantiates the
    class itself, once per connection).
    """

    limits: ClassVar[ServerLimits]
    per_client: ClassVar[dict[str, int]]
    refusals: ClassVar[list[float]]  # [refused since last warning, time of last warning]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: TimerHandle | None = None
        self._awaiting_headers = False
        self._message_started = False
        self._raw_header_bytes = 0  # bytes received while headers are incomplete
        self._header_bytes = 0  # exact size of the parsed request line and headers
        self._client_host: str | None = None
        self._refused = False
        self._pending_error: tuple[int, str, str] | None = None

    # -- connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            self._refuse(
                503, "overloaded",
                f"the gateway already holds its maximum of {limits.max_connections} open connections "
                "(server.max_connections); retry shortly",
            )
            return
        host = self.client[0] if self.client else None
        cap = limits.max_connections_per_client
        if host is not None and cap is not None:
            held = self.per_client.get(host, 0)
            if held >= cap:
                self._refuse(
                    429, "too_many_connections",
                    f"this address already holds {held} open connections to the gateway, its limit "
                    "(server.max_connections_per_client); reuse connections or close idle ones",
                )
                return
            self.per_client[host] = held + 1
            self._client_host = host
        # A connection that never sends a byte is bounded by the header timeout too.
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        host, self._client_host = self._client_host, None
        if host is not None:
            left = self.per_client.get(host, 1) - 1
            if left > 0:
                self.per_client[host] = left
            else:
                self.per_client.pop(host, None)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started and not cycle.disconnected:
            # Still receiving its body, so not forwarded yet: waiting would only let
            # it start a call that the shutdown deadline then cancels. Retrying
            # against another replica is cheaper for everyone.
            self._abandon(
                cycle, 503, "shutting_down", "the gateway is shutting down and did not forward this request; retry it"
            )
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # already answered; the request is discarded unread
        if self._awaiting_headers:
            self._raw_header_bytes += len(data)
        super().data_received(data)
        # Headers still incomplete: httptools buffers a partial header without a bound.
        if (
            self._awaiting_headers
            and self._raw_header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._answer_and_close(*self._too_large())

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for every parser error, including the one raised from
        # on_headers_complete for oversized headers.
        error, self._pending_error = self._pending_error, None
        if error is None:
            error = (400, "invalid_request", f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}); fix the client")
        self._answer_and_close(*error)

    # -- parser callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._awaiting_headers:
            self._expect_headers()
        self._message_started = True

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._message_started = False
        self._cancel_timer()
        # The exact size of the request line and headers, counted once here rather
        # than in a callback per header (two Python frames each on the hot path).
        self._header_bytes = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._header_bytes > self.limits.max_header_bytes:
            self._pending_error = self._too_large()
            raise _HeadersTooLarge  # httptools turns it into a parser error: send_400_response
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.__class__ is RequestResponseCycle:
            # uvicorn builds the cycle itself; its task has not run yet.
            cycle.__class__ = CoalescingCycle
        self._arm(self.limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()

    # -- limits ------------------------------------------------------------------

    def _expect_headers(self) -> None:
        self._awaiting_headers = True
        self._raw_header_bytes = 0
        self._header_bytes = 0
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._message_started:
            self._answer_and_close(
                408, "request_timeout",
                f"the request headers did not arrive within {self.limits.header_timeout_s:g} s "
                "(server.header_timeout_s); send the whole request at once",
            )
        else:
            self.transport.close()  # nothing was asked, so nothing to answer

    def _body_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not cycle.disconnected:
            self._abandon(
                cycle, 408, "request_timeout",
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s of its headers "
                "(server.body_timeout_s); send the whole request at once",
            )
        else:
            self.transport.close()

    def _too_large(self) -> tuple[int, str, str]:
        return (
            431, "headers_too_large",
            f"the request line and headers are larger than {self.limits.max_header_bytes} bytes "
            "(server.max_header_bytes); send fewer or shorter headers",
        )

    def _abandon(self, cycle: RequestResponseCycle, status: int, code: str, message: str) -> None:
        # The app's receive() returns http.disconnect and anything it still sends is
        # dropped, so this answer is the only one on the wire.
        cycle.disconnected = True
        cycle.message_event.set()
        self._answer_and_close(status, code, message)

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        self._cancel_timer()
        self.transport.write(error_response(status, code, message))
        self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._refused = True
        # Not served, so it must not count towards the caps or hold up a graceful shutdown.
        self.connections.discard(self)
        self._log_refusal(message)
        self.transport.write(error_response(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(REFUSE_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _log_refusal(self, message: str) -> None:
        counts = self.refusals
        counts[0] += 1
        now = time.monotonic()
        if now - counts[1] >= REFUSAL_LOG_INTERVAL_S:
            log.warning("refused %d connection(s), the latest from %s: %s",
                        int(counts[0]), self.client[0] if self.client else "?", message)
            counts[0], counts[1] = 0, now

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        self._cancel_timer()
        self._read_timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None


def protocol_for(limits: ServerLimits) -> type[LimitedHttpProtocol]:
    """A protocol class bound to these limits, with its own per-address table."""
    attrs: dict[str, Any] = {"limits": limits, "per_client": {}, "refusals": [0.0, float("-inf")]}
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), attrs)
