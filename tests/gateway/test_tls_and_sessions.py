"""TLS for boto3's bearer-token mode, session ids, and a real `tokenfuse serve` process
that loses no ledger row on SIGTERM."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.config import TLSConfig
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.ledger.schema import connect
from tokenfuse.simulator.server import SimulatorThread


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_boto3_bearer_token_over_tls(sim: SimulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    cfg = make_config(sim.url, tmp_path / "l.db", )
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"tls": TLSConfig(cert=str(cert), key=str(key))})})
    with GatewayThread(cfg, host="localhost") as gw:
        assert gw.url.startswith("https://")
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", ALICE)
        client = boto3.client(
            "bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1", verify=str(cert),
            config=BotoConfig(retries={"max_attempts": 1}),
        )
        out = client.converse(
            modelId="test-claude", messages=[{"role": "user", "content": [{"text": "hello over TLS"}]}],
            inferenceConfig={"maxTokens": 12},
        )
        assert out["usage"]["outputTokens"] == 12
        # An idle TLS keep-alive connection would hold uvicorn's graceful shutdown for 30 s.
        client.close()
        gw.flush(5)
        row = connect(f"sqlite:///{tmp_path / 'l.db'}").execute(
            "SELECT key_name, output, outcome FROM requests"
        ).fetchall()
        assert row == [("alice-droid", 12, "ok")]


def test_session_header_is_recorded(stack: Stack) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0, default_headers={"x-tokenfuse-session": "run-42"}
    )
    for _ in range(3):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "step"}], max_tokens=3)
    # Recorded scoped to the principal that owns it (docs/limits.md, sessions).
    assert [r["session"] for r in stack.rows()] == ["alice/run-42"] * 3


def _wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tokenfuse serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            httpx.get(url + "/health-check-that-is-not-a-route", timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("tokenfuse serve did not become ready")


@pytest.mark.socket
def test_sigterm_loses_no_ledger_row(sim: SimulatorThread, tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    port = 18000 + os.getpid() % 1000
    cfg_text = make_config(sim.url, db).model_dump(mode="json", exclude={"source"})
    cfg_text["server"]["port"] = port
    cfg_text["ledger"] = {"batch_interval_ms": 5000, "batch_size": 100000}  # rows stay queued until shutdown
    path = tmp_path / "tokenfuse.yaml"
    path.write_text(json.dumps(cfg_text))  # JSON is YAML
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenfuse", "serve", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ALICE, max_retries=0)
        for _ in range(25):
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = connect(f"sqlite:///{db}").execute("SELECT outcome, count(*) FROM requests GROUP BY outcome").fetchall()
    assert dict(rows)["ok"] == 25
