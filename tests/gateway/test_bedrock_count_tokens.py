"""Bedrock CountTokens (`POST /model/{id}/count-tokens`): routed, forwarded, free.

Like Anthropic's count_tokens it bills nothing, so it is recorded at $0 and a
budget that refuses everything else still answers it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.gateway.conftest import ALICE_AKID, ALICE_SECRET, Stack, make_config
from tokenfuse.gateway import routes
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.protocols import bedrock
from tokenfuse.protocols.base import ProtocolError
from tokenfuse.simulator.server import SimulatorThread

PROMPT = "Count the tokens of this prompt before sending it. " * 20
CONVERSE = {"messages": [{"role": "user", "content": [{"text": PROMPT}]}], "system": [{"text": "Be brief."}]}
INVOKE = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": PROMPT}],
}


def test_route_matches_count_tokens_for_plain_ids_and_arns() -> None:
    r = routes.match("/model/anthropic.claude-3-haiku/count-tokens")
    assert r is not None and (r.protocol, r.route, r.bedrock_action) == ("bedrock", "count_tokens", "count-tokens")
    arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude"
    r = routes.match(f"/model/{arn}/count-tokens")
    assert r is not None and r.model_from_path == arn and r.route == "count_tokens"


@pytest.mark.parametrize(
    "body",
    [
        {"input": {"converse": CONVERSE}},
        {"input": {"converse": {}}},
        {"input": {"invokeModel": {"body": base64.b64encode(json.dumps(INVOKE).encode()).decode()}}},
    ],
)
def test_parse_accepts_both_input_shapes_with_no_output_limit(body: dict[str, Any]) -> None:
    info = bedrock.parse_request("count_tokens", json.dumps(body).encode(), "test-claude")
    assert info.route == "count_tokens" and info.model == "test-claude"
    assert info.stream is False and info.max_tokens is None and info.unbounded == ()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "exactly one of converse"),
        ({"input": {}}, "exactly one of converse"),
        ({"input": {"converse": CONVERSE, "invokeModel": {"body": ""}}}, "exactly one of converse"),
        ({"input": {"prompt": "hi"}}, "exactly one of converse"),
        ({"input": []}, "'input' must be an object"),
        ({"input": {"converse": []}}, "input.converse must be an object"),
        ({"input": {"converse": {"messages": {}}}}, "input.converse.messages must be an array"),
        ({"input": {"invokeModel": {}}}, "input.invokeModel.body"),
        ({"input": {"invokeModel": {"body": 3}}}, "input.invokeModel.body"),
    ],
)
def test_parse_refuses_other_shapes_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        bedrock.parse_request("count_tokens", json.dumps(body).encode(), "test-claude")
    assert err.value.status == 400 and err.value.error_type == "ValidationException"
    assert field in err.value.message


def test_usage_of_a_count_is_zero() -> None:
    usage = bedrock.usage_from_response("count_tokens", b'{"inputTokens": 123}', {})
    assert usage is not None and usage.total == 0


# -- through a real gateway, with boto3's own CountTokens ---------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


def client(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )


@pytest.fixture
def stack(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    # A budget nothing billable fits: counting must still be answered.
    extra = "budgets:\n  - {name: alice-nothing, match: {principal: alice}, window: total, limit: {usd: 0.000001}}\n"
    with GatewayThread(make_config(sim.url, tmp_path / "ledger.db", extra)) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


@pytest.mark.socket
def test_boto3_count_tokens_converse_is_free_and_admitted_by_a_spent_budget(stack: Stack) -> None:
    out = client(stack.url).count_tokens(modelId="test-claude", input={"converse": CONVERSE})
    assert out["inputTokens"] > len(PROMPT) // 8
    rows = stack.rows()
    assert [(r["outcome"], r["route"], r["protocol"]) for r in rows] == [("ok", "count_tokens", "bedrock")]
    assert Decimal(rows[0]["cost_usd"]) == 0 and rows[0]["model"] == "test-claude"
    served = stack.served()
    assert len(served) == 1 and served[0]["auth"] == "sigv4"  # re-signed with the upstream's credentials
    # The same budget refuses a real call.
    with pytest.raises(ClientError) as err:
        client(stack.url).converse(modelId="test-claude", messages=CONVERSE["messages"])
    assert "alice-nothing" in str(err.value)


@pytest.mark.socket
def test_boto3_count_tokens_invoke_model_body(stack: Stack) -> None:
    out = client(stack.url).count_tokens(
        modelId="test-claude", input={"invokeModel": {"body": json.dumps(INVOKE).encode()}}
    )
    assert out["inputTokens"] > len(PROMPT) // 8
    [row] = stack.rows()
    assert row["route"] == "count_tokens" and Decimal(row["cost_usd"]) == 0


@pytest.mark.socket
def test_a_malformed_count_is_a_validation_error_boto3_does_not_retry(stack: Stack) -> None:
    c = client(stack.url)
    calls: list[int] = []
    c.meta.events.register("before-send.bedrock-runtime.CountTokens", lambda **kw: calls.append(1))
    with pytest.raises(ClientError) as err:
        c.count_tokens(modelId="test-claude", input={"invokeModel": {"body": b"not json"}})
    # The gateway only checks the shape; the provider (here the simulator) rejects the body.
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert len(calls) == 1
