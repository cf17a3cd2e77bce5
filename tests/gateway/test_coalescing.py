"""A non-streaming response is written head and body together; a stream's head
is not held back; keep-alive, `Connection: close` and HEAD behave as before.
Over real sockets against uvicorn with the gateway's protocol class."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from tokenfuse.config import ServerConfig
from tokenfuse.gateway.server_limits import ServerLimits, protocol_for

BODY = b'{"ok":true}'
released = threading.Event()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        while not released.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    limits = ServerLimits.from_config(ServerConfig(), 1024)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="asyncio", http=protocol_for(limits), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _read_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, rest) of one content-length response."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return head, rest[:length], rest[length:]


def test_keep_alive_serves_several_whole_responses_on_one_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        rest = b""
        for _ in range(3):
            sock.sendall(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
            head, body, rest = _read_response(sock, rest)
            assert head.startswith(b"HTTP/1.1 200") and body == BODY
        assert rest == b""


def test_connection_close_is_answered_in_full_then_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")
        head, body, rest = _read_response(sock)
        assert body == BODY and b"connection: close" in head.lower()
        sock.settimeout(5)
        assert rest == b"" and sock.recv(10) == b""  # closed by the server


def test_head_request_gets_headers_only(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"HEAD /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""


def test_a_streams_head_is_sent_before_its_first_event(port: int) -> None:
    released.clear()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /stream HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
        sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk
            head += chunk
        # The app is still waiting to send its first event.
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        released.set()
        data = head
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert b"data: 1\n\n" in data
