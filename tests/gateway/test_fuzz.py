"""Issue 9: malformed requests thrown at every route of a real gateway (real sockets).

Whatever arrives, the gateway answers in the caller's protocol with a 4xx, keeps serving,
logs no traceback, and records nothing unauthenticated as served.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

PATHS = [
    "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens",
    "/model/test-claude/converse", "/model/test-claude/converse-stream", "/model/test-claude/invoke",
    "/model/test-claude/invoke-with-response-stream", "/model/%ZZ/converse", "/model//invoke", "/v2/x",
]

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False), st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "messages", "max_tokens", "n", "stream", "input", "content", "type", "role",
                         "max_completion_tokens", "inferenceConfig", "maxTokens", "system", "tools", "x"]),
        inner, max_size=5,
    ),
    max_leaves=20,
)


def _nested(depth: int) -> bytes:
    return b'{"model":"test-model","messages":' + b"[" * depth + b"]" * depth + b"}"


ADVERSARIAL = [
    _nested(100_000),
    b'{"model":"test-model","messages":[],"max_tokens":' + b"9" * 5000 + b"}",
    b'{"model":"test-model","model":"test-claude","messages":[{"role":"user","content":"x"}]}',
    b"\xff\xfe\x00",
    b"",
    b"null",
    b'{"model": "' + b" " * 100_000 + b'test-model","messages":[]}',
    b'{"model":"test-model","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1}',
]

HEADER_SETS: list[dict[str, str]] = [
    {"authorization": f"Bearer {ALICE}"},
    {"x-api-key": ALICE, "anthropic-version": "2023-06-01"},
    {"authorization": "AWS4-HMAC-SHA256 Credential=AKIATFALICE0000001/20260101/us-east-1/bedrock/aws4_request, "
                      "SignedHeaders=host;x-amz-date, Signature=00", "x-amz-date": "20260101T000000Z"},
    {"authorization": "AWS4-HMAC-SHA256 Credential=/, SignedHeaders=, Signature="},
    {},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with SimulatorThread() as sim:
        config = make_config(sim.url, tmp / "ledger.db", extra="budgets: [{name: all, window: day, limit: {requests: 100000}}]")
        with GatewayThread(config) as gw:
            yield Stack(sim.url, gw, tmp / "ledger.db")


def _check(resp: httpx.Response, path: str) -> None:
    assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:300])
    data: Any = resp.json()  # always a JSON error in one of the three protocols
    assert isinstance(data, dict) and ("error" in data or "message" in data), data
    assert "Traceback" not in resp.text


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def test_adversarial_bodies_on_every_route(stack: Stack, no_tracebacks: None) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for path in PATHS:
            for headers in HEADER_SETS:
                for body in ADVERSARIAL:
                    resp = http.post(path, content=body, headers={**headers, "content-type": "application/json"})
                    if resp.status_code == 200:
                        # Converse takes the model from the URL, so a junk body `model` is just ignored.
                        assert "/converse" in path, (path, body[:80])
                        continue
                    _check(resp, path)
        r = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {ALICE}", "host": "["},
                      json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    served = stack.served()
    rows = stack.rows()
    assert all(r["outcome"] != "ok" for r in rows if r["key_name"] is None)
    # Everything the provider served has exactly one row marked ok, and nothing else is marked ok.
    assert sum(1 for r in rows if r["outcome"] == "ok") == sum(1 for s in served if s["status"] == 200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), headers=st.sampled_from(HEADER_SETS), body=json_value)
def test_random_json_on_every_route(stack: Stack, path: str, headers: dict[str, str], body: Any) -> None:
    raw = json.dumps(body).encode()
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        resp = http.post(path, content=raw, headers={**headers, "content-type": "application/json"})
    if resp.status_code == 200:
        # A random body that happens to be a valid request is served and metered.
        assert resp.headers["x-tokenfuse-request-id"]
        return
    _check(resp, path)


def test_no_unauthenticated_row_is_counted_after_fuzzing(stack: Stack, tmp_path: Path) -> None:
    rows = stack.rows()
    assert rows, "the fuzz tests above ran first"
    assert all(r["outcome"] in ("unauthorized", "not_found", "bad_request") for r in rows if r["key_name"] is None)
    assert all(int(r["input_uncached"]) + int(r["output"]) == 0 for r in rows if r["key_name"] is None)
