"""The upstream HTTP client over real sockets, against small scripted servers, on asyncio's loop and uvloop.

What matters most is which error a failure raises (it decides what the gateway
charges) and that a connection goes back to the pool only when it is clean.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import openai
import pytest
import uvloop

from tests.gateway.conftest import ALICE, Stack, make_config
from tests.gateway.test_tls_and_sessions import self_signed
from tokenfuse.gateway.httpclient import (
    MAX_HEADER_BYTES,
    PAUSE_BYTES,
    PEEK_AFTER_S,
    ConnectError,
    ConnectionBroken,
    HTTPClient,
)
from tokenfuse.gateway.runner import GatewayThread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
Run = Callable[[Coroutine[Any, Any, Any]], Any]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each test on both loops: the gateway runs on uvloop, whose transports differ."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


class Server:
    """A loopback server that runs `handler` per connection and records what it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return body


def answer_each(*answers: bytes) -> Handler:
    """Answer the n-th request on a connection with answers[n]; after the last, keep the connection open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        for data in answers:
            await server.read_request(reader)
            writer.write(data)
            await writer.drain()
        await reader.read()

    return handler


def keep_answering(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while True:
            await server.read_request(reader)
            writer.write(data)
            await writer.drain()

    return handler


async def until(condition: Callable[[], bool]) -> None:
    """Wait for an asynchronous effect (a FIN processed, a timer fired); fail if it never comes."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


def idle(client: HTTPClient) -> int:
    return sum(len(v) for v in client._idle.values())


def test_content_length_answer_and_exactly_the_headers_given(run: Run) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Dup: 1\r\nContent-Type: application/json\r\nx-dup: 2\r\n\r\nhello"

    async def main() -> None:
        async with Server(keep_answering(answer)) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url + "?q=1", b'{"a": 1}', {"content-type": "application/json", "x-k": "v"})
            assert resp.status == 200
            assert list(resp.headers) == [
                ("Content-Length", "5"), ("X-Dup", "1"), ("Content-Type", "application/json"), ("x-dup", "2")
            ]
            assert resp.headers.get("x-dup") == "1" and resp.headers.get("CONTENT-TYPE") == "application/json"
            assert resp.headers.get("missing") is None
            assert await resp.read() == b"hello"
            resp.release()
            await client.close()
        head, body = srv.requests[0]
        assert body == b'{"a": 1}'
        # No User-Agent, Accept-Encoding, Connection or anything else of the client's own.
        assert head == (
            f"POST /v1/chat/completions?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            "content-type: application/json\r\nx-k: v\r\nContent-Length: 8\r\n\r\n"
        ).encode()

    run(main())


def test_callers_host_is_kept_and_their_length_replaced(run: Run) -> None:
    async def main() -> None:
        async with Server(keep_answering(OK)) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"abc", {"Host": "signed.example", "content-length": "99"})
            await resp.read()
            resp.release()
            await client.close()
        head = srv.requests[0][0]
        assert b"Host: signed.example\r\n" in head and head.count(b"Host:") == 1
        assert b"Content-Length: 3\r\n" in head and b"99" not in head

    run(main())


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(run: Run) -> None:
    async def main() -> None:
        async with Server(keep_answering(OK)) as srv:
            client = HTTPClient()
            for bad in ({"x": "a\r\nInjected: 1"}, {"x\n": "a"}, {"x": "a\rb"}):
                with pytest.raises(ValueError, match="CR or LF"):
                    await client.post(srv.url, b"", bad)
            await client.close()
            assert srv.connections == 0

    run(main())


def test_chunked_answer_whole_and_as_a_stream(run: Run) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def main() -> None:
        async with Server(keep_answering(chunked)) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            assert await resp.read() == b"abcde"
            resp.release()
            resp = await client.post(srv.url, b"x", {})
            assert b"".join([c async for c in resp.iter_chunks()]) == b"abcde"
            resp.release()
            await client.close()
            assert srv.connections == 1 and len(srv.requests) == 2

    run(main())


def test_an_answer_delimited_by_close_ends_at_close_and_its_connection_is_not_reused(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the ")
        await writer.drain()
        writer.write(b"end")

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            for _ in range(2):
                resp = await client.post(srv.url, b"x", {})
                assert await resp.read() == b"until the end"
                resp.release()
            await client.close()
            assert srv.connections == 2

    run(main())


def test_keep_alive_reuses_one_connection(run: Run) -> None:
    async def main() -> None:
        async with Server(keep_answering(OK)) as srv:
            client = HTTPClient()
            for _ in range(5):
                resp = await client.post(srv.url, b"x", {})
                assert await resp.read() == b"ok"
                resp.release()
            assert idle(client) == 1
            await client.close()
            assert srv.connections == 1 and len(srv.requests) == 5

    run(main())


def test_concurrent_requests_open_as_many_connections_and_all_return_to_the_pool(run: Run) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(OK)

    async def main() -> None:
        async with Server(slow) as srv:
            client = HTTPClient()

            async def one() -> bytes:
                resp = await client.post(srv.url, b"x", {})
                try:
                    return await resp.read()
                finally:
                    resp.release()

            assert await asyncio.gather(*(one() for _ in range(20))) == [b"ok"] * 20
            assert srv.connections == 20 and idle(client) == 20
            await client.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_server_will_close_is_not_reused(run: Run, answer: bytes) -> None:
    async def main() -> None:
        async with Server(answer_each(answer, OK)) as srv:
            client = HTTPClient()
            for _ in range(2):
                resp = await client.post(srv.url, b"x", {})
                assert await resp.read() == b"ok"
                resp.release()
            await client.close()
            assert srv.connections == 2

    run(main())


def test_an_idle_connection_the_server_closed_is_replaced_without_error(run: Run) -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)  # keep-alive by default, but the server closes it right after
        await writer.drain()

    async def main() -> None:
        async with Server(answer_then_close) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            assert await resp.read() == b"ok"
            resp.release()
            first = resp._conn
            await until(lambda: first.closed)  # the FIN was seen while it sat in the pool
            resp = await client.post(srv.url, b"x", {})
            assert await resp.read() == b"ok" and resp._conn is not first
            resp.release()
            await client.close()
            assert srv.connections == 2 and len(srv.requests) == 2

    run(main())


def test_a_close_the_loop_has_not_seen_yet_is_caught_before_writing(run: Run) -> None:
    """The server's FIN is in the socket but the loop has not run since: a connection idle for a
    while is polled before reuse, and the request goes out on a new one."""
    listener = socket.create_server(("127.0.0.1", 0))
    close_first = threading.Event()
    requests: list[bytes] = []

    def serve() -> None:
        for i in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while not data.endswith(b"\r\n\r\nx"):
                    data += conn.recv(65536)
                requests.append(data)
                conn.sendall(OK)
                if i == 0:
                    close_first.wait(5)
                else:
                    conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"

    async def main() -> None:
        client = HTTPClient()
        resp = await client.post(url, b"x", {})
        await resp.read()
        resp.release()
        first = resp._conn
        close_first.set()
        select.select([first.fd], [], [], 5)  # blocks the loop until the FIN has arrived
        assert not first.closed  # the loop has not seen it
        first.idle_since -= PEEK_AFTER_S + 0.5
        resp = await client.post(url, b"x", {})
        assert await resp.read() == b"ok" and resp._conn is not first
        resp.release()
        await client.close()

    try:
        run(main())
        thread.join(5)
        assert len(requests) == 2
    finally:
        listener.close()


def test_a_connection_closed_after_the_request_was_written_is_not_retried(run: Run) -> None:
    """A kept-alive connection that breaks with no answer: the server may have read the request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)  # the second request arrives, then the server goes away

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            await resp.read()
            resp.release()
            with pytest.raises(ConnectionBroken, match="without answering"):
                await client.post(srv.url, b"y", {})
            await client.close()
            assert [body for _, body in srv.requests] == [b"x", b"y"]  # no silent third attempt
            assert srv.connections == 1

    run(main())


def test_refused_connection_is_a_connect_error(run: Run) -> None:
    async def main() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        client = HTTPClient(connect_timeout=5)
        with pytest.raises(ConnectError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{port}/x", b"x", {})
        await client.close()

    run(main())


def test_connect_timeout_is_a_connect_error(run: Run) -> None:
    async def main() -> None:
        # A listening socket whose one-slot accept queue is full: further SYNs are dropped.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())
        try:
            client = HTTPClient(connect_timeout=0.3)
            with pytest.raises(ConnectError, match="timed out"):
                await client.post(f"http://127.0.0.1:{listener.getsockname()[1]}/x", b"x", {})
            await client.close()
        finally:
            filler.close()
            listener.close()

    run(main())


def test_no_answer_in_time_is_a_timeout(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await reader.read()

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient(read_timeout=0.2)
            with pytest.raises(TimeoutError, match="headers"):
                await client.post(srv.url, b"x", {})
            assert idle(client) == 0
            await client.close()

    run(main())


def test_a_body_that_stalls_is_a_timeout_whole_or_streamed(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient(read_timeout=0.2)
            resp = await client.post(srv.url, b"x", {})
            with pytest.raises(TimeoutError, match="body"):
                await resp.read()
            resp.release()
            resp = await client.post(srv.url, b"x", {})
            got = []
            with pytest.raises(TimeoutError):
                async for chunk in resp.iter_chunks():
                    got.append(chunk)
            assert got == [b"abc"]
            resp.release()
            assert idle(client) == 0
            await client.close()
            assert srv.connections == 2

    run(main())


def test_the_read_timeout_is_per_read_not_for_the_whole_answer(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
        for i in range(12):
            await asyncio.sleep(0.1)
            writer.write(b"%d" % (i % 10))

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient(read_timeout=0.6)
            resp = await client.post(srv.url, b"x", {})
            assert await resp.read() == b"012345678901"  # 1.2 s in all, never 0.6 s without a byte
            resp.release()
            await client.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["content-length", "chunked", "in-headers"],
)
def test_a_connection_broken_mid_answer_is_broken_not_a_short_body(run: Run, answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            with pytest.raises(ConnectionBroken, match="mid-response"):
                resp = await client.post(srv.url, b"x", {})
                try:
                    await resp.read()
                finally:
                    resp.release()
            with pytest.raises(ConnectionBroken, match="mid-response"):
                resp = await client.post(srv.url, b"x", {})
                try:
                    async for _ in resp.iter_chunks():
                        pass
                finally:
                    resp.release()
            assert idle(client) == 0
            await client.close()

    run(main())


def test_a_malformed_answer_is_broken(run: Run) -> None:
    async def main() -> None:
        async with Server(answer_each(b"SMTP ready\r\n\r\n")) as srv:
            client = HTTPClient()
            with pytest.raises(ConnectionBroken, match="not valid HTTP"):
                await client.post(srv.url, b"x", {})
            assert idle(client) == 0
            await client.close()

    run(main())


def test_headers_beyond_the_limit_are_broken(run: Run) -> None:
    many = b"".join(b"X-%d: %b\r\n" % (i, b"v" * 1000) for i in range(2 * MAX_HEADER_BYTES // 1000))

    async def main() -> None:
        async with Server(answer_each(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")) as srv:
            client = HTTPClient()
            with pytest.raises(ConnectionBroken, match="headers are larger"):
                await client.post(srv.url, b"x", {})
            await client.close()

    run(main())


def test_informational_answers_are_skipped(run: Run) -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\nX: y\r\n\r\nok"

    async def main() -> None:
        async with Server(keep_answering(answer)) as srv:
            client = HTTPClient()
            for _ in range(2):
                resp = await client.post(srv.url, b"x", {})
                assert resp.status == 201 and list(resp.headers) == [("Content-Length", "2"), ("X", "y")]
                assert await resp.read() == b"ok"
                resp.release()
            await client.close()
            assert srv.connections == 1

    run(main())


def test_a_half_read_answer_closes_its_connection(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfirs\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"4\r\nlast\r\n0\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            async for chunk in resp.iter_chunks():
                assert chunk == b"firs"
                break
            resp.release()  # not read to its end
            assert idle(client) == 0
            resp = await client.post(srv.url, b"x", {})  # answered on a new connection, whole
            assert await resp.read() == b"firslast"
            resp.release()
            assert idle(client) == 1
            resp = await client.post(srv.url, b"x", {})  # the pooled one
            resp.close()
            assert idle(client) == 0
            await client.close()
            assert srv.connections == 2

    run(main())


def test_a_stream_nobody_reads_stops_being_read_at_the_limit(run: Run) -> None:
    piece = b"x" * 65536
    total = 4 * PAUSE_BYTES

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            conn = resp._conn
            await until(lambda: conn.paused)
            await asyncio.sleep(0.2)  # the server keeps writing; the client does not read
            assert PAUSE_BYTES < conn.buffered < PAUSE_BYTES + 512 * 1024
            got = 0
            async for chunk in resp.iter_chunks():
                got += len(chunk)
            assert got == total and not conn.paused
            resp.release()
            assert idle(client) == 1
            await client.close()

    run(main())


def test_idle_connections_are_closed_after_idle_s_and_bytes_while_idle_drop_one(run: Run) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # nobody asked
        await reader.read()

    async def main() -> None:
        async with Server(keep_answering(OK)) as srv:
            client = HTTPClient(idle_s=0.2)
            resp = await client.post(srv.url, b"x", {})
            await resp.read()
            resp.release()
            conn = resp._conn
            assert idle(client) == 1 and not conn.closed
            await until(lambda: idle(client) == 0)
            assert conn.closed
            await client.close()
        async with Server(chatty) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            await resp.read()
            resp.release()
            conn = resp._conn
            await until(lambda: conn.closed)
            srv.handler = keep_answering(OK)
            resp = await client.post(srv.url, b"x", {})
            assert await resp.read() == b"ok" and resp._conn is not conn
            resp.release()
            await client.close()

    run(main())


def test_close_closes_pooled_and_active_connections(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await reader.read()

    async def main() -> None:
        async with Server(handler) as srv:
            client = HTTPClient()
            resp = await client.post(srv.url, b"x", {})
            await client.close()
            with pytest.raises(ConnectionBroken):
                await resp.read()
            resp.release()
            assert not client._live

    run(main())


def _tls_server_context(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = self_signed(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


def test_https_verifies_the_certificate_and_the_host_name(run: Run, tmp_path: Path) -> None:
    server_ctx, cert = _tls_server_context(tmp_path)

    async def main() -> None:
        srv = Server(keep_answering(OK))
        srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
        srv.port = srv.server.sockets[0].getsockname()[1]
        try:
            trusting = HTTPClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
            for _ in range(2):
                resp = await trusting.post(f"https://localhost:{srv.port}/v1/x", b"x", {})
                assert await resp.read() == b"ok"
                resp.release()
            assert srv.connections == 1
            assert srv.requests[0][0].startswith(f"POST /v1/x HTTP/1.1\r\nHost: localhost:{srv.port}\r\n".encode())
            # The certificate names localhost, not 127.0.0.1.
            with pytest.raises(ConnectError, match="cannot connect"):
                await trusting.post(f"https://127.0.0.1:{srv.port}/v1/x", b"x", {})
            await trusting.close()
            # The system's CAs (the default) do not know a self-signed certificate.
            default = HTTPClient()
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.post(f"https://localhost:{srv.port}/v1/x", b"x", {})
            await default.close()
            assert len(srv.requests) == 2
        finally:
            srv.server.close()

    run(main())


def test_urls_it_cannot_serve_are_refused(run: Run) -> None:
    async def main() -> None:
        client = HTTPClient()
        for url in ("ftp://h/x", "http:///x", "/relative"):
            with pytest.raises(ValueError, match="only http"):
                await client.post(url, b"", {})
        await client.close()

    run(main())


# -- through the gateway: what each failure is charged (docs/limits.md) ----------------------

MSG = [{"role": "user", "content": "hello there, how are you today?"}]


def test_gateway_charges_the_bound_when_a_whole_answer_breaks(stack: Stack) -> None:
    stack.sim_config(fault="break", fault_count=1)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="test-model", messages=MSG, max_tokens=40)  # type: ignore[arg-type]
    assert err.value.status_code == 502 and "do not retry" in err.value.message
    row = stack.rows()[-1]
    assert row["outcome"] == "upstream_error" and row["estimated"] and row["output"] == 40
    assert "mid-response; charged at the bound" in row["reason"] and float(row["cost_usd"]) > 0
    out = client.chat.completions.create(model="test-model", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert out.usage is not None and out.usage.completion_tokens == 5


def test_gateway_charges_the_bound_when_the_upstream_reads_the_request_and_hangs_up(tmp_path: Path) -> None:
    """The provider may have read it and be generating: never retried, charged at the bound."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with GatewayThread(make_config(upstream, tmp_path / "l.db")) as gw:
            stack = Stack(upstream, gw, tmp_path / "l.db")
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
            with pytest.raises(openai.APIStatusError) as err:
                client.chat.completions.create(model="test-model", messages=MSG, max_tokens=40)  # type: ignore[arg-type]
            assert err.value.status_code == 502 and "may have been billed" in err.value.message
            row = stack.rows()[-1]
            assert row["outcome"] == "upstream_error" and row["estimated"] and row["output"] == 40
            assert "after the request was sent (ConnectionBroken); charged at the bound" in row["reason"]
            assert float(row["cost_usd"]) > 0
        assert len(seen) == 1
    finally:
        stop.set()
        thread.join(5)
        listener.close()
