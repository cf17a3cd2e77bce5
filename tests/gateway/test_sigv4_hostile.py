"""SigV4 as an attacker sends it, through the real gateway: replays, unsigned or swapped
bodies, wrong credential scopes, broken Host headers, and secrets in debug logs."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from tests.gateway.conftest import ALICE, ALICE_AKID, ALICE_SECRET, Stack, make_config
from tokenfuse.config import Config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

CONVERSE = "/model/test-claude/converse"


def converse_body(max_tokens: int = 5) -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": [{"text": "hello"}]}], "inferenceConfig": {"maxTokens": max_tokens}}
    ).encode()


def sign(
    url: str,
    body: bytes,
    *,
    service: str = "bedrock",
    region: str = "us-east-1",
    unsigned_payload: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    req = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json", **(headers or {})})
    if unsigned_payload:
        req.context["payload_signing_enabled"] = False
    SigV4Auth(Credentials(ALICE_AKID, ALICE_SECRET), service, region).add_auth(req)
    return dict(req.headers.items())


def post(stack: Stack, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(stack.url + CONVERSE, headers=headers, content=body, timeout=10)


def assert_bedrock_refusal(resp: httpx.Response, fragment: str) -> None:
    assert resp.status_code in (400, 403), resp.text
    assert resp.headers["x-amzn-errortype"]
    assert fragment in resp.json()["message"]
    assert "Traceback" not in resp.text


def outcomes(stack: Stack) -> list[str]:
    return [r["outcome"] for r in stack.rows()]


def test_exact_replay_is_refused_when_the_replay_cache_is_on(pinned: Stack) -> None:
    body = converse_body()
    headers = sign(pinned.url + CONVERSE, body)
    assert post(pinned, headers, body).status_code == 200
    assert_bedrock_refusal(post(pinned, headers, body), "already received")
    assert len(pinned.served()) == 1
    assert outcomes(pinned) == ["ok", "unauthorized"]


def test_replay_cache_is_off_by_default(stack: Stack) -> None:
    # boto3 signs identical calls made in the same second identically (its invocation id is unsigned).
    body = converse_body()
    headers = sign(stack.url + CONVERSE, body)
    assert [post(stack, headers, body).status_code for _ in range(2)] == [200, 200]


def test_unsigned_payload_is_refused_and_cannot_carry_another_body(stack: Stack) -> None:
    headers = sign(stack.url + CONVERSE, converse_body(5), unsigned_payload=True)
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert_bedrock_refusal(post(stack, headers, converse_body(4000)), "UNSIGNED-PAYLOAD is refused")
    assert stack.served() == []
    assert outcomes(stack) == ["unauthorized"]


def test_body_swapped_under_a_signature_is_refused(stack: Stack) -> None:
    url = stack.url + CONVERSE
    # boto3's own way: no x-amz-content-sha256, the body's hash is in the canonical request.
    assert_bedrock_refusal(post(stack, sign(url, converse_body(5)), converse_body(4000)), "does not match")
    # The S3-style way: a signed x-amz-content-sha256 that no longer matches the body.
    import hashlib

    body = converse_body(5)
    signed = sign(url, body, headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    assert_bedrock_refusal(post(stack, signed, converse_body(4000)), "x-amz-content-sha256")
    assert stack.served() == []
    assert outcomes(stack) == ["unauthorized", "unauthorized"]


def test_wrong_service_is_refused(stack: Stack) -> None:
    body = converse_body()
    assert_bedrock_refusal(post(stack, sign(stack.url + CONVERSE, body, service="s3"), body), "service 's3'")
    assert stack.served() == []


@pytest.fixture
def pinned(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    config = make_config(sim.url, tmp_path / "ledger.db", extra="sigv4: {region: us-east-1, replay_cache_size: 1000}")
    with GatewayThread(config) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def test_wrong_region_is_refused_where_one_is_configured(pinned: Stack) -> None:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=pinned.url, region_name="eu-west-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    with pytest.raises(client.exceptions.ClientError) as err:
        client.converse(modelId="test-claude", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "region 'eu-west-1'" in err.value.response["Error"]["Message"]
    assert pinned.served() == []
    assert outcomes(pinned) == ["unauthorized"]


def raw_request(url: str, head: list[str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {CONVERSE} HTTP/1.1", *head, f"content-length: {len(body)}", "connection: close", "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = dict(h.lower().split(": ", 1) for h in header_lines)
    return int(status_line.split()[1]), headers, payload


def test_broken_host_with_a_known_key_id_is_a_bedrock_refusal(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = converse_body()
    signed = sign(stack.url + CONVERSE, body)
    head = [f"{k}: {v}" for k, v in signed.items() if k.lower() != "host"] + ["host: ["]
    status, headers, payload = raw_request(stack.url, head, body)
    assert status in (400, 403)
    assert headers["x-amzn-errortype"] and "malformed" in json.loads(payload)["message"]
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    # The gateway still serves, and nothing unauthenticated was recorded as served.
    assert post(stack, sign(stack.url + CONVERSE, body), body).status_code == 200
    assert outcomes(stack) == ["unauthorized", "ok"]
    assert len(stack.served()) == 1


def test_unsigned_session_header_is_ignored(stack: Stack) -> None:
    body = converse_body()
    headers = {**sign(stack.url + CONVERSE, body), "x-tokenfuse-session": "someone-elses-run"}
    assert post(stack, headers, body).status_code == 200
    signed = sign(stack.url + CONVERSE, body, headers={"x-tokenfuse-session": "my-run"})
    assert post(stack, signed, body).status_code == 200
    first, second = (r["session"] for r in stack.rows())
    assert first is None and second is not None and second.endswith("my-run")


# -- secrets in logs --------------------------------------------------------------------------------

SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLEsessionTOKENvalue0123456789"


def debug_config(sim_url: str, db: Path) -> Config:
    cfg = make_config(sim_url, db)
    upstreams = [
        u.model_copy(update={"aws_session_token": SESSION_TOKEN}) if u.protocol == "bedrock" else u
        for u in cfg.upstreams
    ]
    server = cfg.server.model_copy(update={"log_level": "debug"})
    return cfg.model_copy(update={"upstreams": upstreams, "server": server})


def secrets_of(cfg: Config) -> list[str]:
    found = [SESSION_TOKEN, ALICE, ALICE_SECRET, cfg.server.admin_token or ""]
    for u in cfg.upstreams:
        found += [u.api_key or "", u.aws_secret_access_key or ""]
    return [s for s in found if s]


def boto_client(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def test_no_secret_in_debug_logs_of_a_sigv4_round_trip(
    sim: SimulatorThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = debug_config(sim.url, tmp_path / "l.db")
    caplog.set_level(logging.DEBUG)
    botocore_logger = logging.getLogger("botocore")
    saved = botocore_logger.level
    with GatewayThread(cfg) as gw:
        # The gateway keeps botocore at INFO; force its debug output anyway, so
        # the redaction itself is what this test exercises.
        botocore_logger.setLevel(logging.DEBUG)
        try:
            client = boto_client(gw.url)
            sigs: list[str] = []
            client.meta.events.register(
                "before-send", lambda request, **_: sigs.append(request.headers["Authorization"].decode()[-64:])
            )
            out = client.converse(modelId="test-claude", messages=[{"role": "user", "content": [{"text": "hi"}]}])
            assert out["usage"]["outputTokens"] > 0
            assert sim.url and gw.flush(5)
        finally:
            botocore_logger.setLevel(saved)
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}" for r in caplog.records
    )
    # Not vacuous: the upstream re-signing (with the session token) was logged by botocore.
    assert "x-amz-security-token:[REDACTED]" in text
    assert any(r.name == "botocore.auth" for r in caplog.records)
    for secret in [*secrets_of(cfg), *sigs]:
        assert secret not in text, secret
    assert not re.search(r"(?i)signature\s*[=:]\s*[0-9a-f]{64}", text)


@pytest.mark.socket
def test_tokenfuse_serve_at_debug_logs_no_secret(sim: SimulatorThread, tmp_path: Path) -> None:
    cfg = debug_config(sim.url, tmp_path / "l.db")
    port = 19000 + os.getpid() % 1000
    data = cfg.model_dump(mode="json", exclude={"source"})
    data["server"]["port"] = port
    path = tmp_path / "tokenfuse.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenfuse", "serve", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                httpx.get(url + "/not-a-route", timeout=0.5)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "tokenfuse serve did not become ready"
                time.sleep(0.05)
        client = boto_client(url)
        client.converse(modelId="test-claude", messages=[{"role": "user", "content": [{"text": "hi"}]}])
        httpx.post(url + CONVERSE, headers={"authorization": f"Bearer {ALICE}x"}, content=b"{}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read()
    # Before the redaction, botocore printed the upstream's canonical request here,
    # x-amz-security-token included, at this log level.
    assert "Application startup complete" in err
    for secret in secrets_of(cfg):
        assert secret not in err, secret
