"""Bad input and upstream faults: a clear error in the caller's protocol, the gateway keeps
serving, and the ledger records what happened. No credential ever reaches a log or an error."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

MSG = [{"role": "user", "content": "hello there, how are you today?"}]


def oai(url: str, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def still_serving(stack: Stack) -> None:
    out = oai(stack.url).chat.completions.create(model="test-model", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    assert out.usage is not None and out.usage.completion_tokens == 5


def test_malformed_json_invalid_utf8_wrong_type_and_large_body(stack: Stack) -> None:
    h = {"authorization": f"Bearer {ALICE}", "content-type": "application/json"}
    with httpx.Client(base_url=stack.url) as http:
        r = http.post("/v1/chat/completions", content=b'{"model": "test-model", "messages": [', headers=h)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "JSON" in r.json()["error"]["message"]
        r = http.post("/v1/messages", content=b'{"model": "test-claude\xff"}', headers=h)
        assert r.status_code == 400 and r.json()["type"] == "error"
        assert "UTF-8" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", content=b"model=x", headers={**h, "content-type": "text/plain"})
        assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
        r = http.post("/model/test-claude/converse", content=b"[1, 2]", headers={**h, "x-amz-date": "x"})
        assert r.status_code == 400 and r.headers["x-amzn-errortype"].startswith("ValidationException")
    outcomes = [row["outcome"] for row in stack.rows()]
    assert outcomes == ["bad_request"] * 4
    assert stack.served() == []
    still_serving(stack)


def test_body_over_the_limit_is_413(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = make_config(sim.url, tmp_path / "l.db").model_copy(deep=True)
    object.__setattr__(cfg.server, "max_body_bytes", 1000)
    with GatewayThread(cfg) as gw:
        with pytest.raises(openai.APIStatusError) as err:
            oai(gw.url).chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "x" * 5000}]
            )
        assert err.value.status_code == 413


def test_unknown_model_fails_closed(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai(stack.url).chat.completions.create(model="no-such-model-9", messages=MSG)  # type: ignore[arg-type]
    assert "no known price" in err.value.message and "prices:" in err.value.message
    assert stack.served() == []
    assert stack.rows()[-1]["outcome"] == "refused"


def test_upstream_500_passes_through_and_is_recorded(stack: Stack) -> None:
    stack.sim_config(fault="500", fault_count=1)
    with pytest.raises(openai.InternalServerError):
        oai(stack.url).chat.completions.create(model="test-model", messages=MSG)  # type: ignore[arg-type]
    row = stack.rows()[-1]
    assert row["outcome"] == "upstream_error" and row["status"] == 500 and row["cost_usd"] == "0"
    still_serving(stack)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_upstream_refusing_connections_is_502(tmp_path: Path) -> None:
    cfg = make_config(f"http://127.0.0.1:{_closed_port()}", tmp_path / "l.db")
    with GatewayThread(cfg) as gw:
        with pytest.raises(anthropic.APIStatusError) as err:
            anthropic.Anthropic(base_url=gw.url, api_key=ALICE, max_retries=0).messages.create(
                model="test-claude", max_tokens=10, messages=MSG  # type: ignore[arg-type]
            )
        assert err.value.status_code == 502
        assert "unreachable" in str(err.value.message)
        gw.flush(5)


def test_upstream_timeout_is_504(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = make_config(sim.url, tmp_path / "l.db")
    object.__setattr__(cfg.server, "upstream_timeout_s", 0.5)
    with GatewayThread(cfg) as gw:
        httpx.post(f"{sim.url}/_sim/config", json={"fault": "hang", "fault_count": 1})
        try:
            with pytest.raises(openai.APIStatusError) as err:
                oai(gw.url).chat.completions.create(model="test-model", messages=MSG)  # type: ignore[arg-type]
            assert err.value.status_code == 504
        finally:
            httpx.post(f"{sim.url}/_sim/config", json={"fault": None})


def test_broken_stream_is_recorded_as_estimated(stack: Stack) -> None:
    stack.sim_config(fault="break", fault_count=1, output_tokens=40)
    got = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in oai(stack.url).chat.completions.create(
            model="test-model", messages=MSG, max_tokens=40, stream=True  # type: ignore[arg-type]
        ):
            got.append(chunk)
    stack.sim_config(output_tokens=64)
    time.sleep(0.1)
    row = stack.rows()[-1]
    served = stack.served()[-1]
    assert not served["complete"]
    assert row["estimated"] and row["outcome"] == "upstream_error"
    # The provider may bill the whole generation of a broken stream: charged at the bound.
    assert row["output"] == 40 >= served["usage"]["output"]
    assert "charged at the bound" in row["reason"]
    still_serving(stack)


def test_client_disconnect_mid_stream_is_recorded(stack: Stack) -> None:
    stack.sim_config(output_tokens=400, chunk_delay_ms=5)
    try:
        stream = oai(stack.url).chat.completions.create(
            model="test-model", messages=MSG, max_tokens=400, stream=True  # type: ignore[arg-type]
        )
        assert isinstance(stream, openai.Stream)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.time() + 5
        while time.time() < deadline:
            rows = stack.rows()
            if rows and rows[-1]["outcome"] == "client_abort":
                break
            time.sleep(0.05)
    finally:
        stack.sim_config(output_tokens=64, chunk_delay_ms=0)
    row = stack.rows()[-1]
    # The gateway reads the abandoned stream to its end, so the row is the provider's exact figure.
    assert row["outcome"] == "client_abort" and not row["estimated"]
    served = stack.served()[-1]
    assert served["complete"] and row["output"] == served["usage"]["output"] == 400
    assert "metered to the end" in row["reason"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def test_no_secret_in_logs_or_errors(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        oai(stack.url, "sk-live-secret-that-is-wrong").chat.completions.create(
            model="test-model", messages=MSG  # type: ignore[arg-type]
        )
    assert "sk-live-secret-that-is-wrong" not in err.value.message
    still_serving(stack)
    text = logs.text
    for secret in (ALICE, "sk-live-secret-that-is-wrong", "sk-upstream-openai", "upstream-secret"):
        assert secret not in text
    rows = stack.rows()
    assert all(ALICE not in str(r) for r in rows)
