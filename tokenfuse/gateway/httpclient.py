"""The upstream HTTP/1.1 client: one POST per call over a keep-alive pool, responses parsed by httptools.

Built for forwarding and nothing else (docs/architecture.md): no proxies,
cookies, redirects or decompression, and no headers of its own but Host and
Content-Length. Its errors say whether the request may have reached the
server, because that decides what the gateway charges (docs/limits.md):

* ConnectError: no connection was made (DNS, refused, TLS, connect timeout); nothing was sent.
* TimeoutError: the request was sent and the server then sent nothing for ``read_timeout`` seconds.
* ConnectionBroken: the connection failed after the request was (possibly) sent, or the answer was
  not HTTP. A kept-alive connection the server closed just as it was reused lands here too: it is
  never retried, since the server may have read the request.

A connection goes back to the pool only when its response was read to the end
and the server keeps it alive; anything else closes it.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

PAUSE_BYTES: Final = 1 << 20  # a stream's unread bytes above this stop reading from the socket
MAX_HEADER_BYTES: Final = 256 * 1024  # bytes received before an answer's headers are complete (1xx included)
IDLE_S: Final = 60.0
DNS_TTL_S: Final = 300.0
# A connection idle longer than this is polled before reuse (one select(), ~1 µs): a server's idle
# timeout may have closed it a moment ago, its FIN not yet seen by the loop. Idle timeouts are
# seconds, so a connection reused sooner is spared the syscall (the common case under load).
PEEK_AFTER_S: Final = 1.0
_PORTS: Final = {"http": 80, "https": 443}
_OWN_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
_MAX_TARGETS: Final = 1024
_Key = tuple[str, str, int]


class UpstreamError(Exception):
    """Base of the client's errors (a read timeout is the builtin TimeoutError)."""


class ConnectError(UpstreamError):
    """No connection was made: the server saw nothing of the request."""


class ConnectionBroken(UpstreamError):
    """The connection failed after the request was (possibly) sent, or the answer was not HTTP."""


class Headers(list[tuple[str, str]]):
    """Response headers as received: order, duplicates and spelling kept."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self:
            if k.lower() == name:
                return v
        return default


@dataclass(frozen=True, slots=True)
class _Target:
    key: _Key
    host: str
    port: int
    tls: bool
    start: bytes  # request line
    host_line: bytes


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _PORTS or not host:
        raise ValueError(f"cannot POST to {url!r}: only http:// and https:// URLs with a host are supported")
    default = _PORTS[scheme]
    port = parts.port or default
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    authority = f"[{name}]" if ":" in name else name
    if port != default:
        authority += f":{port}"
    # Spaces, controls and non-ASCII are escaped so nothing in a path can end the request line;
    # existing %XX escapes are kept as they are (SigV4 signed them).
    path = quote(parts.path or "/", safe="!$%&'()*+,/:;=@~") + (f"?{quote(parts.query, safe='!$%&()*+,/:;=?@~')}"
                                                                if parts.query else "")
    return _Target(
        (scheme, host, port), host, port, scheme == "https",
        f"POST {path} HTTP/1.1\r\n".encode("ascii"), f"Host: {authority}\r\n".encode("ascii"),
    )


def _head(target: _Target, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines: list[str] = []
    host = target.host_line
    for k, v in headers.items():
        lower = k.lower()
        if lower in _OWN_HEADERS:
            continue
        if lower == "host":
            host = b""
        lines.append(f"{k}: {v}\r\n")
    text = "".join(lines)
    # One CR and one LF per line, or a value would smuggle a header or a second request.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a request header name or value contains CR or LF")
    return b"%b%b%bContent-Length: %d\r\n\r\n" % (target.start, host, text.encode("latin-1"), len(body))


class _Conn(asyncio.Protocol):
    """One connection and the state of the exchange on it (one at a time: no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: _Key, read_timeout: float | None,
                 live: set[_Conn]) -> None:
        self.loop = loop
        self.key = key
        self.read_timeout = read_timeout
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.closed = False  # by either side: never reused
        self.idle_since = 0.0
        self.active = False
        self.received = 0  # bytes of this exchange's answer
        self.status = 0
        self.headers = Headers()
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.informational = False
        # The parser calls list.append itself for each piece of body: no Python frame per chunk.
        self.chunks: list[bytes] = []
        self.on_body = self.chunks.append
        self.buffered = 0  # bytes received since the consumer last took the chunks
        self.parser = HttpResponseParser(self)
        self.paused = False
        self.read_all = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes nobody asked for (idle, or after the answer): the stream is out of step.
            self.close()
            return
        if not self.headers_done and self.received > MAX_HEADER_BYTES:
            self._fail(ConnectionBroken(f"the answer's headers are larger than {MAX_HEADER_BYTES} bytes"))
            return
        self.received += len(data)
        self.buffered += len(data)
        self.last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self.complete:  # the answer is whole; only what came after it is wrong
                self.close()
            elif isinstance(exc.__context__, ConnectionBroken):  # raised by a callback below
                self._fail(exc.__context__)
            else:
                self._fail(ConnectionBroken(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))
            return
        if self.chunks and not self.read_all:
            if self.buffered > PAUSE_BYTES and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)
        self.live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise ConnectionBroken("a second response without a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # 1xx (Early Hints, Processing): a final answer follows on the same connection.
            self.informational = True
            self.headers = Headers()
            return
        self.status = status
        self.headers_done = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- the exchange ------------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectError("the new connection closed before the request was sent")
        self.active = True
        self.headers_done = self.complete = self.read_all = False
        self.status = self.received = self.buffered = 0
        self.headers = Headers()
        self.chunks.clear()
        if len(body) < 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    async def wait(self) -> None:
        """Until the parser has news (headers, a chunk, the end) or the connection fails."""
        fut = self.loop.create_future()
        self.waiter = fut
        if self.read_timeout is not None:
            # Read timeout: time without any byte while someone waits. One timer per
            # connection, pushed back lazily rather than rescheduled on every read.
            self.last = self.loop.time()
            if self.timer is None:
                self.timer = self.loop.call_at(self.last + self.read_timeout, self._on_timer)
        try:
            await fut
        finally:
            self.waiter = None

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def readable(self) -> bool:
        """Bytes or a FIN wait on the idle socket (so it cannot be reused), though the loop has not run yet."""
        if self.fd < 0:
            return False
        try:
            return bool(select.select((self.fd,), (), (), 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.closed = True
        transport = self.transport
        if transport is not None:
            if self.active and not self.complete:
                transport.abort()  # half-read: drop what is buffered, TLS close_notify included
            else:
                transport.close()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _wake(self) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.close()
        self._wake()

    def _on_timer(self) -> None:
        self.timer = None
        if self.waiter is None or self.waiter.done() or self.read_timeout is None:
            return
        deadline = self.last + self.read_timeout
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        phase = "the response's headers" if not self.headers_done else "more of the response body"
        self._fail(TimeoutError(f"the upstream sent nothing for {self.read_timeout:g} s while waiting for {phase}"))

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.active or self.complete or self.error is not None:
            return
        if self.headers_done and self._until_close():
            self.complete, self.keep_alive = True, False
        elif not self.received:
            self.error = ConnectionBroken("the upstream closed the connection without answering")
        else:
            self.error = ConnectionBroken(
                "the upstream closed the connection mid-response" + (f" ({exc})" if exc is not None else "")
            )
        self._wake()

    def _until_close(self) -> bool:
        """The body has no length and is not chunked: the server's close ends it."""
        for k, v in self.headers:
            k = k.lower()
            if k == "content-length" or (k == "transfer-encoding" and "chunked" in v.lower()):
                return False
        return True


class Response:
    """One answer. Read it with ``read()`` or ``async for chunk in resp.iter_chunks()``, then ``release()``."""

    __slots__ = ("_client", "_conn", "_done", "headers", "status")

    def __init__(self, client: HTTPClient, conn: _Conn) -> None:
        self._client = client
        self._conn = conn
        self._done = False
        self.status = conn.status
        self.headers = conn.headers

    async def read(self) -> bytes:
        """The whole body; raises TimeoutError or ConnectionBroken if it does not arrive whole."""
        conn = self._conn
        conn.read_all = True
        if conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        while not conn.complete:
            if conn.error is not None:
                raise conn.error
            await conn.wait()
        return conn.take() if conn.chunks else b""

    def iter_chunks(self) -> Response:
        """Body bytes as they arrive (whatever is buffered, joined), for relaying streams."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    def release(self) -> None:
        """Back to the pool if the body was read to its end and the server keeps it alive; else closed."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed and conn.error is None and not conn.chunks:
            conn.active = False
            self._client._put(conn)
        else:
            conn.close()
            conn.active = False

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()
            self._conn.active = False


class HTTPClient:
    """``await client.post(url, body, headers)`` over kept-alive connections, no limit on their number."""

    def __init__(
        self,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        idle_s: float = IDLE_S,
        dns_ttl_s: float = DNS_TTL_S,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._idle_s = idle_s
        self._dns_ttl_s = dns_ttl_s
        self._idle: dict[_Key, list[_Conn]] = {}
        self._live: set[_Conn] = set()
        self._targets: dict[str, _Target] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[Any, ...]]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Send one POST and wait for the response's headers."""
        if self._closed:
            raise ConnectError("the upstream client is closed")
        target = self._targets.get(url)
        if target is None:
            target = self._remember(url)
        head = _head(target, body, headers)
        conn = self._pooled(target.key)
        if conn is None:
            conn = await self._connect(target)
        conn.send(head, body)
        try:
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._live):
            conn.close()
        await asyncio.sleep(0)  # let the transports report connection_lost

    def _remember(self, url: str) -> _Target:
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        target = self._targets[url] = _target(url)
        return target

    def _pooled(self, key: _Key) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            transport = conn.transport
            waited = conn.loop.time() - conn.idle_since
            if (not conn.closed and transport is not None and not transport.is_closing() and waited < self._idle_s
                    and (waited < PEEK_AFTER_S or not conn.readable())):
                return conn
            conn.close()
        return None

    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self._idle_s, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for idle_s; come back when the next one is due."""
        self._sweeper = None
        now = loop.time()
        oldest: float | None = None
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed or now - conn.idle_since >= self._idle_s:
                    conn.close()
                else:
                    keep.append(conn)
                    oldest = conn.idle_since if oldest is None else min(oldest, conn.idle_since)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self._idle_s, self._sweep, loop)

    async def _connect(self, target: _Target) -> _Conn:
        loop = asyncio.get_running_loop()
        where = f"{target.host}:{target.port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._open(loop, target)
        except TimeoutError:
            raise ConnectError(f"connecting to {where} timed out after {self._connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake and certificate errors
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc

    async def _open(self, loop: asyncio.AbstractEventLoop, target: _Target) -> _Conn:
        if target.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system CAs and hostname check, as aiohttp
        error: OSError | None = None
        for family, _, proto, _, addr in await self._resolve(loop, target.host, target.port):
            try:
                return await self._open_one(loop, target, family, proto, addr[0], addr[1])
            except OSError as exc:  # the next address may answer
                error = exc
        self._dns.pop((target.host, target.port), None)  # none did: ask the resolver again next time
        raise error or OSError(f"{target.host} has no address")

    async def _open_one(
        self, loop: asyncio.AbstractEventLoop, target: _Target, family: int, proto: int, ip: str, port: int
    ) -> _Conn:
        conn = _Conn(loop, target.key, self._read_timeout, self._live)
        await loop.create_connection(
            lambda: conn, ip, port, family=family, proto=proto,
            ssl=self._ssl if target.tls else None, server_hostname=target.host if target.tls else None,
        )
        return conn

    async def _resolve(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[tuple[Any, ...]]:
        key = (host, port)
        now = loop.time()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if len(self._dns) >= _MAX_TARGETS:
            self._dns.clear()
        self._dns[key] = (now + self._dns_ttl_s, infos)
        return infos
