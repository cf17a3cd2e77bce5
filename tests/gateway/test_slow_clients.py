"""Slow and greedy clients against a real `tokenfuse serve` process: header and body
read timeouts, header size, connection caps, and a SIGTERM that always finishes.

Deadlines here are generous upper bounds ("it happened before"), never timings.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import ALICE, make_config
from tests.gateway.replicas import Replica
from tokenfuse.simulator.server import SimulatorThread

pytestmark = pytest.mark.socket

SLACK = 8.0  # seconds on top of a configured timeout before a test gives up
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0
REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\n"
CHAT = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


def _headers(content_length: int) -> bytes:
    return (
        REQUEST_LINE
        + b"Host: 127.0.0.1\r\n"
        + f"Authorization: Bearer {ALICE}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {content_length}\r\n\r\n".encode()
    )


def _server_config(sim_url: str, db: Path, **server: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = make_config(sim_url, db).model_dump(mode="json", exclude={"source"})
    cfg["server"].update(server)
    return cfg


@pytest.fixture
def gateway(sim: SimulatorThread, tmp_path: Path) -> Iterator[Replica]:
    cfg = _server_config(
        sim.url, tmp_path / "ledger.db",
        header_timeout_s=HEADER_TIMEOUT, body_timeout_s=BODY_TIMEOUT, max_connections_per_client=None,
    )
    replica = Replica(cfg, tmp_path, "gw").start()
    yield replica
    replica.stop()


def _connect(gw: Replica, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def _until_closed(sock: socket.socket, deadline: float, trickle: bytes = b"") -> bytes:
    """Send `trickle` once a second until the gateway closes the connection; return
    what it answered. Fails if the connection is still open at `deadline`."""
    sock.settimeout(1.0)
    got = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle)
                except OSError:
                    return got
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the gateway still holds a slow connection (received so far: {got[:200]!r})")


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _chat(gw: Replica) -> str:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0, timeout=10)
    reply = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage is not None
    return reply.id


def test_trickled_request_line_is_closed_with_a_408(gateway: Replica) -> None:
    sock = _connect(gateway, b"POST /v1/chat/compl")
    answer = _until_closed(sock, time.monotonic() + HEADER_TIMEOUT + SLACK, trickle=b"e")
    sock.close()
    if answer:  # a reset may overtake the answer; the close is what matters
        assert _status(answer) == 408
        assert b"server.header_timeout_s" in answer
    _chat(gateway)


def test_silent_connection_is_closed(gateway: Replica) -> None:
    sock = _connect(gateway, b"")
    assert _until_closed(sock, time.monotonic() + HEADER_TIMEOUT + SLACK) == b""
    sock.close()


def test_trickled_body_is_closed_with_a_408(gateway: Replica) -> None:
    sock = _connect(gateway, _headers(1000) + b'{"model": ')
    answer = _until_closed(sock, time.monotonic() + BODY_TIMEOUT + SLACK, trickle=b" ")
    sock.close()
    if answer:
        assert _status(answer) == 408
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    _chat(gateway)


def test_keep_alive_connection_gets_a_fresh_header_timeout_per_request(gateway: Replica) -> None:
    body = CHAT.encode()
    sock = _connect(gateway, _headers(len(body)) + body)
    sock.settimeout(10)
    first = b""
    while b"\r\n\r\n" not in first:
        first += sock.recv(65536)
    head, rest = first.split(b"\r\n\r\n", 1)
    assert _status(head) == 200, head
    length = int(next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k.lower() == b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    # The next request starts trickling on the same connection.
    sock.sendall(b"POST /v1/chat/")
    answer = _until_closed(sock, time.monotonic() + HEADER_TIMEOUT + SLACK, trickle=b"c")
    sock.close()
    if answer:
        assert _status(answer) == 408


def test_oversized_headers_get_a_431(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = _server_config(sim.url, tmp_path / "l.db", max_header_bytes=4096)
    gw = Replica(cfg, tmp_path, "gw").start()
    try:
        # Complete but too large: refused when the headers end.
        big = httpx.post(f"{gw.url}/v1/chat/completions", content=CHAT,
                         headers={"authorization": f"Bearer {ALICE}", "x-padding": "a" * 8000}, timeout=10)
        assert big.status_code == 431
        assert big.json()["error"]["code"] == "headers_too_large"
        # Never ending: refused once the buffered part passes the limit.
        sock = _connect(gw, REQUEST_LINE + b"X-Padding: " + b"a" * 6000)
        answer = _until_closed(sock, time.monotonic() + SLACK)
        sock.close()
        if answer:
            assert _status(answer) == 431
        _chat(gw)
    finally:
        gw.stop()


def test_200_slow_clients_do_not_stop_real_requests(gateway: Replica) -> None:
    slow = [_connect(gateway, b"POST /v1/chat/comp") for _ in range(100)]
    slow += [_connect(gateway, _headers(1000) + b"{") for _ in range(100)]
    try:
        for _ in range(3):
            _chat(gateway)
        deadline = time.monotonic() + BODY_TIMEOUT + SLACK
        for sock in slow:
            _until_closed(sock, deadline)
        _chat(gateway)
    finally:
        for sock in slow:
            sock.close()


def test_sigterm_with_a_slow_body_client_exits_0_and_flushes_the_ledger(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    # The body timeout is far away: only the shutdown can end this client.
    cfg = _server_config(sim.url, db, body_timeout_s=300, shutdown_timeout_s=2)
    cfg["ledger"] = {"batch_interval_ms": 60000, "batch_size": 100000}  # rows stay queued until shutdown
    gw = Replica(cfg, tmp_path, "gw").start()
    assert gw.proc is not None
    try:
        _chat(gw)
        sock = _connect(gw, _headers(1000) + b"{")
        time.sleep(0.5)  # the request is in the app, waiting for its body
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=2 + SLACK) == 0, gw.log.read_text()[-2000:]
        answer = _until_closed(sock, time.monotonic() + SLACK)
        if answer:
            assert _status(answer) == 503
        sock.close()
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
    rows = sqlite3.connect(db).execute("SELECT outcome, count(*) FROM requests GROUP BY outcome").fetchall()
    assert dict(rows).get("ok") == 1


def test_sigterm_cancels_a_hung_upstream_call_at_the_deadline(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = _server_config(sim.url, tmp_path / "l.db", shutdown_timeout_s=2)
    gw = Replica(cfg, tmp_path, "gw").start()
    assert gw.proc is not None
    sim.app.config = sim.app.config.updated({"fault": "hang"})
    try:
        body = CHAT.encode()
        sock = _connect(gw, _headers(len(body)) + body)
        time.sleep(1.0)  # forwarded; the simulator never answers
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=2 + SLACK) == 0, gw.log.read_text()[-2000:]
        sock.close()
    finally:
        sim.app.config = sim.app.config.updated({"fault": None})
        if gw.proc.poll() is None:
            gw.proc.kill()


def test_connections_beyond_max_connections_get_a_503(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = _server_config(sim.url, tmp_path / "l.db", max_connections=5, max_connections_per_client=None,
                         header_timeout_s=60)
    gw = Replica(cfg, tmp_path, "gw").start()
    held = [_connect(gw, b"") for _ in range(5)]
    try:
        time.sleep(0.3)  # all five accepted
        over = httpx.post(f"{gw.url}/v1/chat/completions", content=CHAT,
                          headers={"authorization": f"Bearer {ALICE}"}, timeout=10)
        assert over.status_code == 503
        assert "server.max_connections" in over.json()["error"]["message"]
        for sock in held:
            sock.close()
        held = []
        deadline = time.monotonic() + SLACK
        while True:  # the gateway notices the closes asynchronously
            try:
                _chat(gw)
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        gw.stop()


def test_connections_beyond_the_per_client_cap_get_a_429(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = _server_config(sim.url, tmp_path / "l.db", max_connections_per_client=3, header_timeout_s=60)
    gw = Replica(cfg, tmp_path, "gw").start()
    held = [_connect(gw, b"") for _ in range(3)]
    try:
        time.sleep(0.3)
        over = httpx.post(f"{gw.url}/v1/chat/completions", content=CHAT,
                          headers={"authorization": f"Bearer {ALICE}"}, timeout=10)
        assert over.status_code == 429
        assert "server.max_connections_per_client" in over.json()["error"]["message"]
        held.pop().close()
        deadline = time.monotonic() + SLACK
        while True:
            try:
                _chat(gw)
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 429 and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        gw.stop()


def test_exit_code_is_0_on_a_plain_sigterm(sim: SimulatorThread, tmp_path: Path) -> None:
    gw = Replica(_server_config(sim.url, tmp_path / "l.db"), tmp_path, "gw").start()
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    try:
        assert gw.proc.wait(timeout=SLACK) == 0
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        raise
