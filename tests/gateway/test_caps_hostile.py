"""Issue 8: the cap holds when the network, the provider or the client misbehaves.

Every test runs a real `tokenfuse serve` process in front of the project's simulator, made
to bill the way real providers do (a generation that started is billed in full, even when
nobody reads it), and compares what the simulator billed with the cap.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx
import openai
import pytest

from tests.gateway.conftest import ALICE, BOB
from tests.gateway.replicas import Replica
from tests.gateway.test_hard_limits import base_config, served_cost
from tokenfuse.ledger.schema import connect
from tokenfuse.simulator.server import SimulatorThread

pytestmark = pytest.mark.socket

MSG = [{"role": "user", "content": "Summarise the incident report in three bullet points."}]


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


def sim_config(sim: SimulatorThread, **changes: Any) -> None:
    httpx.post(f"{sim.url}/_sim/config", json=changes, timeout=5).raise_for_status()


def gateway(sim: SimulatorThread, tmp: Path, usd: str, **server: Any) -> tuple[Replica, dict[str, Any]]:
    cfg = base_config(sim.url, tmp, "memory", [
        {"name": "cap", "window": "day", "limit": {"usd": usd}},
    ])
    cfg["server"].update(server)
    return Replica(cfg, tmp, "gw").start(), cfg


def rows(tmp: Path) -> list[dict[str, Any]]:
    conn = connect(f"sqlite:///{tmp / 'ledger.db'}")
    cur = conn.execute("SELECT * FROM requests ORDER BY rowid")
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.close()
    return out


def wait_rows(tmp: Path, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.time() + timeout
    while True:
        got = rows(tmp)
        if len(got) >= n or time.time() > deadline:
            return got
        time.sleep(0.05)


def billed(sim: SimulatorThread, cfg: dict[str, Any], settle_s: float = 0.0) -> Decimal:
    time.sleep(settle_s)
    return served_cost(sim.url, cfg)[0]


def test_upstream_timeouts_are_charged_at_the_bound_and_not_retried(sim: SimulatorThread, tmp_path: Path) -> None:
    # The provider answers after 1.5 s and bills the generation whether or not anyone waits.
    sim_config(sim, latency_ms=1500, output_tokens=100, bill_abandoned=True)
    gw, cfg = gateway(sim, tmp_path, "0.01", upstream_timeout_s=0.5)
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=2, timeout=10)
        statuses = []
        for _ in range(15):
            try:
                client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100)  # type: ignore[arg-type]
                statuses.append(200)
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
        assert 504 in statuses and 429 in statuses, statuses
        # The SDK did not retry the timeouts: one upstream request per 504.
        total = billed(sim, cfg, settle_s=2.0)
        served = httpx.get(f"{sim.url}/_sim/served").json()["requests"]
        assert len(served) == statuses.count(504)
        assert total <= Decimal("0.01"), total
        timeouts = [r for r in wait_rows(tmp_path, 15) if r["status"] == 504]
        assert timeouts and all(Decimal(r["cost_usd"]) > 0 and r["estimated"] for r in timeouts)
        assert all("charged at the bound" in r["reason"] for r in timeouts)
    finally:
        gw.stop()


def test_client_that_hangs_up_mid_stream_is_metered_to_the_end(sim: SimulatorThread, tmp_path: Path) -> None:
    sim_config(sim, output_tokens=100, chunk_tokens=2, chunk_delay_ms=10, bill_abandoned=True)
    gw, cfg = gateway(sim, tmp_path, "0.01")
    try:
        admitted = 0
        for _ in range(25):
            client = anthropic.Anthropic(base_url=gw.url, api_key=ALICE, max_retries=0)
            try:
                with client.messages.stream(model="test-claude", max_tokens=100, messages=MSG) as s:  # type: ignore[arg-type]
                    for _ in s.text_stream:
                        break  # read the head, then hang up
                admitted += 1
            except anthropic.APIStatusError as exc:
                assert exc.status_code == 402
        assert 0 < admitted < 25
        total = billed(sim, cfg, settle_s=2.0)
        assert total <= Decimal("0.01"), total
        aborted = [r for r in wait_rows(tmp_path, 25) if r["outcome"] == "client_abort"]
        assert aborted and all(r["output"] == 100 and not r["estimated"] for r in aborted)
    finally:
        gw.stop()


def test_raw_socket_reset_after_the_head_is_metered(sim: SimulatorThread, tmp_path: Path) -> None:
    sim_config(sim, output_tokens=100, chunk_tokens=2, chunk_delay_ms=10, bill_abandoned=True)
    gw, cfg = gateway(sim, tmp_path, "0.01")
    try:
        body = json.dumps({"model": "test-model", "messages": MSG, "max_tokens": 100, "stream": True}).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.sendall(head + body)
                s.recv(200)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert billed(sim, cfg, settle_s=2.5) <= Decimal("0.01")
    finally:
        gw.stop()


def test_sessions_belong_to_their_principal(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = base_config(sim.url, tmp_path, "memory", [])
    cfg["sessions"] = {"max_requests": 3}
    gw = Replica(cfg, tmp_path, "gw").start()
    try:
        def call(key: str, session: str) -> int:
            r = httpx.post(
                f"{gw.url}/v1/chat/completions", timeout=10,
                headers={"authorization": f"Bearer {key}", "x-tokenfuse-session": session},
                json={"model": "test-model", "messages": MSG, "max_tokens": 5},
            )
            return r.status_code

        assert [call(BOB, "alice-run-1") for _ in range(3)] == [200, 200, 200]
        # Bob used the same id three times; Alice's session of that name is untouched.
        assert [call(ALICE, "alice-run-1") for _ in range(4)] == [200, 200, 200, 429]
        assert call(ALICE, "x" * 500) == 400
        got = wait_rows(tmp_path, 8)
        assert {r["session"] for r in got if r["status"] == 200} == {"bob/alice-run-1", "alice/alice-run-1"}
    finally:
        gw.stop()


class _Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that records the headers it receives."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_billing_headers_from_the_client_are_not_forwarded_or_are_refused(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = base_config(sim.url, tmp_path, "memory", [])
    for up in cfg["upstreams"]:
        if up["protocol"] == "openai":
            up["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    gw = Replica(cfg, tmp_path, "gw").start()
    try:
        client = openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0,
            organization="org-someone-else", project="proj-someone-else",
        )
        client.chat.completions.create(model="test-model", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
        seen = _Recorder.seen[-1]
        assert "openai-organization" not in seen and "openai-project" not in seen
        assert seen["authorization"] == "Bearer sk-upstream-openai"
        assert seen["user-agent"].startswith("OpenAI/Python")
        assert any(k.startswith("x-stainless-") for k in seen)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="test-model", messages=MSG, max_tokens=5, service_tier="priority"  # type: ignore[arg-type]
            )
        assert "service_tier" in err.value.message and "allow_priced_options" in err.value.message
        assert len(_Recorder.seen) == 1
    finally:
        gw.stop()
        server.shutdown()


def served_requests(sim: SimulatorThread) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{sim.url}/_sim/served", timeout=5).json()["requests"]
    return data


def test_n_choices_are_in_the_bound(sim: SimulatorThread, tmp_path: Path) -> None:
    sim_config(sim, output_tokens=100)
    gw, cfg = gateway(sim, tmp_path, "0.01")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100, n=100)  # type: ignore[arg-type]
        admitted = 0
        for _ in range(6):
            try:
                out = client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100, n=8)  # type: ignore[arg-type]
                assert len(out.choices) == 8
                admitted += 1
            except openai.RateLimitError:
                pass
        assert admitted == 1  # 8 x 100 output tokens at $10/M: $0.008 of the $0.01 cap each
        assert billed(sim, cfg) <= Decimal("0.01")
    finally:
        gw.stop()


def test_server_held_context_and_server_tools_are_refused(sim: SimulatorThread, tmp_path: Path) -> None:
    gw, _ = gateway(sim, tmp_path, "1")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
        first = client.responses.create(model="test-model", input="Read this long report ..." * 50, max_output_tokens=20)
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model="test-model", input="and?", previous_response_id=first.id,
                                    max_output_tokens=20)
        assert "previous_response_id" in err.value.message and "allow_unbounded" in err.value.message
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model="test-model", input="news?", tools=[{"type": "web_search"}],
                                    max_output_tokens=20)
        assert "web_search" in err.value.message
        ac = anthropic.Anthropic(base_url=gw.url, api_key=ALICE, max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as aerr:
            ac.messages.create(model="test-claude", max_tokens=20, messages=MSG,  # type: ignore[arg-type]
                               tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}])  # type: ignore[list-item]
        assert "web_search" in aerr.value.message
        assert len(served_requests(sim)) == 1
    finally:
        gw.stop()


def test_escaped_media_type_counts_as_media(sim: SimulatorThread, tmp_path: Path) -> None:
    gw, _ = gateway(sim, tmp_path, "0.50")
    try:
        raw = (
            b'{"model":"test-claude","max_tokens":50,"messages":[{"role":"user","content":['
            b'{"type":"docum\\u0065nt","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}},'
            b'{"type":"text","text":"summarise"}]}]}'
        )
        headers = {"x-api-key": ALICE, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        r = httpx.post(f"{gw.url}/v1/messages", content=raw, headers=headers, timeout=10)
        # A document can bill up to 250,000 input tokens: $0.94 at the cache-write rate, over the cap.
        assert r.status_code == 402, r.text
        assert served_requests(sim) == []
    finally:
        gw.stop()


def test_output_limit_of_zero_is_refused_in_every_protocol(sim: SimulatorThread, tmp_path: Path) -> None:
    gw, _ = gateway(sim, tmp_path, "1")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="test-model", messages=MSG, max_tokens=0)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="test-model", input="x", max_output_tokens=0)
        ac = anthropic.Anthropic(base_url=gw.url, api_key=ALICE, max_retries=0)
        with pytest.raises(anthropic.BadRequestError):
            ac.messages.create(model="test-claude", max_tokens=0, messages=MSG)  # type: ignore[arg-type]
        # max_completion_tokens 0 beside a huge max_tokens: the larger one is clamped, the 0 refused.
        r = httpx.post(
            f"{gw.url}/v1/chat/completions", timeout=10, headers={"authorization": f"Bearer {ALICE}"},
            json={"model": "test-model", "messages": MSG, "max_completion_tokens": 0, "max_tokens": 1_000_000},
        )
        assert r.status_code == 400
        assert served_requests(sim) == []
    finally:
        gw.stop()


def test_duplicate_keys_never_reach_a_parser_that_reads_them_the_other_way(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    sim_config(sim, json_duplicates="first")
    gw, _ = gateway(sim, tmp_path, "1")
    try:
        gw.admin("POST", "/kills", {"scope": "model", "value": "test-claude", "reason": "too dear"})
        raw = (b'{"model":"test-claude","messages":[{"role":"user","content":"hi"}],"max_tokens":5,'
               b'"model":"test-model"}')
        r = httpx.post(f"{gw.url}/v1/chat/completions", content=raw, timeout=10,
                       headers={"authorization": f"Bearer {ALICE}", "content-type": "application/json"})
        assert r.status_code == 400 and "model" in r.json()["error"]["message"]
        assert served_requests(sim) == []
    finally:
        gw.stop()


def test_an_upstream_that_overruns_max_tokens_is_stopped(sim: SimulatorThread, tmp_path: Path) -> None:
    sim_config(sim, overrun_factor=3, chunk_tokens=1, chunk_delay_ms=1)
    gw, cfg = gateway(sim, tmp_path, "0.05")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
        # A stream is cut as soon as more text events than reserved output tokens have arrived.
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in client.chat.completions.create(
                model="test-model", messages=MSG, max_tokens=100, stream=True  # type: ignore[arg-type]
            ):
                pass
        # The model is now stopped on this gateway (and persisted): nothing more is sent to it.
        with pytest.raises(openai.PermissionDeniedError) as err:
            client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100)  # type: ignore[arg-type]
        assert "kill switch" in err.value.message and "returned" in err.value.message
        served = served_requests(sim)
        assert len(served) == 1 and served[0]["usage"]["output"] < 300
        assert billed(sim, cfg) <= Decimal("0.05")
        kills = gw.admin("GET", "/kills").json()
        assert any(k["scope"] == "model" and k["value"] == "test-model" for k in kills["kill_switches"]), kills
    finally:
        gw.stop()


def test_a_non_streamed_overrun_stops_the_model_after_one_answer(sim: SimulatorThread, tmp_path: Path) -> None:
    sim_config(sim, overrun_factor=3)
    gw, cfg = gateway(sim, tmp_path, "0.05")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE, max_retries=0)
        out = client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100)  # type: ignore[arg-type]
        assert out.usage is not None and out.usage.completion_tokens == 300
        for _ in range(5):
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model="test-model", messages=MSG, max_tokens=100)  # type: ignore[arg-type]
        assert len(served_requests(sim)) == 1
        assert billed(sim, cfg) <= Decimal("0.05")
        row = next(r for r in wait_rows(tmp_path, 6) if r["outcome"] == "ok")
        assert row["output"] == 300 and "returned 300 output tokens" in row["reason"]
    finally:
        gw.stop()
