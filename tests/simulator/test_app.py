"""Errors, faults, controls and the served record, over real sockets."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tokenfuse.protocols.eventstream import EventStreamDecoder, EventStreamError
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.tokens import prompt_tokens

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]}
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "hello there"}]}]}


@pytest.fixture
def client(sim: SimulatorThread) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=5)


def records(sim: SimulatorThread, count: int = 1) -> list[dict[str, Any]]:
    """The served records, once ``count`` of them exist (a server thread may
    still be finishing a request the client has given up on)."""
    deadline = time.monotonic() + 5
    while sim.app.served.count < count and time.monotonic() < deadline:
        time.sleep(0.01)
    out: list[dict[str, Any]] = sim.app.served.as_dict()["requests"]
    return out


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.split(b"\n\n"):
        for line in frame.split(b"\n"):
            if line.startswith(b"data: {"):
                out.append(json.loads(line[6:]))
    return out


def test_unknown_paths_get_404_in_each_protocols_format(sim: SimulatorThread, client: httpx.Client) -> None:
    openai = client.post("/v1/completions", json=CHAT)
    assert openai.status_code == 404 and openai.json()["error"]["type"] == "invalid_request_error"
    anthropic = client.post("/v1/nothing", json=MESSAGES, headers={"anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 404
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "not_found_error"
    bedrock = client.post("/model/amazon.nova-lite-v1:0/frobnicate", json=CONVERSE)
    assert bedrock.status_code == 404
    assert bedrock.headers["x-amzn-errortype"].startswith("UnknownOperationException:")
    assert "message" in bedrock.json()
    assert client.get("/v1/chat/completions").status_code == 404
    assert [r["status"] for r in records(sim, 4)] == [404, 404, 404, 404]


def test_bad_json_is_a_400_in_each_protocols_format(client: httpx.Client) -> None:
    bad = b"{not json"
    openai = client.post("/v1/chat/completions", content=bad)
    assert openai.status_code == 400 and openai.json()["error"]["type"] == "invalid_request_error"
    anthropic = client.post("/v1/messages", content=bad)
    assert anthropic.status_code == 400 and anthropic.json()["error"]["type"] == "invalid_request_error"
    bedrock = client.post("/model/m/converse", content=bad)
    assert bedrock.status_code == 400 and bedrock.headers["x-amzn-errortype"].startswith(
        "ValidationException"
    )
    missing = client.post("/v1/messages", json={"model": "claude-x", "messages": []})
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["message"]


def test_auth_style_is_recorded(sim: SimulatorThread, client: httpx.Client) -> None:
    client.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "k"})
    client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer k"})
    client.post("/v1/chat/completions", json=CHAT)
    client.post(
        "/model/m/converse", json=CONVERSE, headers={"authorization": "AWS4-HMAC-SHA256 Credential=x"}
    )
    assert [r["auth"] for r in records(sim, 4)] == ["x-api-key", "bearer", "none", "sigv4"]


def test_per_request_output_and_latency_headers(client: httpx.Client) -> None:
    chat = client.post("/v1/chat/completions", json=CHAT, headers={"x-sim-output-tokens": "3"})
    assert chat.json()["usage"]["completion_tokens"] == 3
    assert chat.json()["choices"][0]["message"]["content"] == "Lorem ipsum "
    converse = client.post("/model/m/converse", json=CONVERSE, headers={"x-sim-latency-ms": "5"})
    assert converse.json()["metrics"]["latencyMs"] == 5
    bad = client.post("/v1/chat/completions", json=CHAT, headers={"x-sim-output-tokens": "many"})
    assert bad.status_code == 400


def test_error_faults_in_each_protocol(sim: SimulatorThread, client: httpx.Client) -> None:
    headers = {"x-sim-fault": "500"}
    assert (
        client.post("/v1/chat/completions", json=CHAT, headers=headers).json()["error"]["type"]
        == "server_error"
    )
    limited = client.post("/v1/messages", json=MESSAGES, headers={"x-sim-fault": "429"})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    throttled = client.post("/model/anthropic.claude-sim-fault-429/converse", json=CONVERSE)
    assert throttled.status_code == 429
    assert throttled.headers["x-amzn-errortype"].startswith("ThrottlingException")
    served = records(sim, 3)
    assert [r["fault"] for r in served] == ["500", "429", "429"]
    assert all(sum(r["usage"].values()) == 0 for r in served)


def test_global_fault_applies_to_the_next_n_requests(sim: SimulatorThread, client: httpx.Client) -> None:
    changed = client.post("/_sim/config", json={"fault": "500", "fault_count": 1})
    assert changed.json()["fault"] == "500"
    assert client.post("/model/m/converse", json=CONVERSE).status_code == 500
    assert client.post("/model/m/converse", json=CONVERSE).status_code == 200


def test_broken_stream_records_what_was_emitted(sim: SimulatorThread, client: httpx.Client) -> None:
    received = b""
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-sim-fault": "break"}) as r:
            for chunk in r.iter_raw():
                received += chunk
    assert b"[DONE]" not in received
    chunks = sse_payloads(received)
    assert all(c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    (record,) = records(sim)
    assert record["complete"] is False and record["status"] == 200
    assert record["usage"]["output"] == len(text) // 4 == 32
    assert record["usage"]["input_uncached"] == prompt_tokens(len("hello there"))


def test_broken_bedrock_stream_ends_before_metadata(sim: SimulatorThread, client: httpx.Client) -> None:
    decoder = EventStreamDecoder()
    names: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/model/m-sim-fault-break/converse-stream", json=CONVERSE) as r:
            for chunk in r.iter_raw():
                names += [m.headers[":event-type"] for m in decoder.feed(chunk)]
    assert names[0] == "messageStart" and "metadata" not in names
    (record,) = records(sim)
    assert record["complete"] is False and record["usage"]["output"] == 32


def test_broken_body_is_shorter_than_its_length(sim: SimulatorThread, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/messages", json=MESSAGES, headers={"x-sim-fault": "break"})
    (record,) = records(sim)
    assert (
        record["complete"] is False
        and record["usage"]["output"] == 0
        and record["usage"]["input_uncached"] == 3
    )


def test_garbage_bodies_and_frames(sim: SimulatorThread, client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"x-sim-fault": "garbage"})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    stream = client.post("/model/m/converse-stream", json=CONVERSE, headers={"x-sim-fault": "garbage"})
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(stream.content)
    assert [r["complete"] for r in records(sim, 2)] == [False, False]


def test_hang_never_answers(sim: SimulatorThread) -> None:
    with httpx.Client(base_url=sim.url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=CHAT, headers={"x-sim-fault": "hang"})
    (record,) = records(sim)
    assert record["status"] == 0 and record["complete"] is False


def test_client_that_leaves_mid_stream_is_recorded_incomplete(
    sim: SimulatorThread, client: httpx.Client
) -> None:
    sim.app.config = sim.app.config.updated({"chunk_delay_ms": 20, "chunk_tokens": 1})
    body = {**MESSAGES, "stream": True}
    with client.stream("POST", "/v1/messages", json=body) as r:
        next(r.iter_raw())
    (record,) = records(sim)
    assert record["complete"] is False and record["usage"]["output"] < 64


def test_control_routes(sim: SimulatorThread, client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/model/m/converse", json=CONVERSE)
    served = client.get("/_sim/served").json()
    assert [r["protocol"] for r in served["requests"]] == ["openai", "bedrock"]
    assert served["totals"]["gpt-4o"]["output"] == 64 and served["totals"]["m"]["input_uncached"] == 3
    assert set(served["requests"][0]) >= {
        "protocol",
        "route",
        "model",
        "stream",
        "auth",
        "usage",
        "status",
        "complete",
    }
    bad = client.post("/_sim/config", json={"output_tokenz": 3})
    assert bad.status_code == 400 and "output_tokenz" in bad.json()["error"]
    assert client.post("/_sim/config", json={"fault": "explode"}).status_code == 400
    assert client.post("/_sim/config", json={"output_tokens": 5}).json()["output_tokens"] == 5
    assert client.post("/v1/chat/completions", json=CHAT).json()["usage"]["completion_tokens"] == 5
    client.post("/_sim/reset")
    assert client.get("/_sim/served").json()["requests"] == []
    assert client.get("/_sim/config").json()["output_tokens"] == 64


def test_every_setting_is_documented() -> None:
    from dataclasses import fields
    from pathlib import Path

    from tokenfuse.simulator.state import SimConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()
    missing = [f.name for f in fields(SimConfig) if f"`{f.name}`" not in doc]
    assert missing == []
