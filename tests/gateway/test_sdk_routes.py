"""Every route, streaming and not, through the official SDKs: what the gateway
meters and records equals what the simulator served."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import boto3
import openai
import pytest
from botocore.config import Config as BotoConfig

from tests.gateway.conftest import ALICE, ALICE_AKID, ALICE_SECRET, BOB, Stack

CLASSES = ("input_uncached", "cache_read", "cache_write", "cache_write_1h", "output")


def assert_metered(stack: Stack, model: str, *, route: str, n_rows: int = 1) -> dict[str, Any]:
    rows = stack.rows()
    served = stack.served()
    assert len(rows) == n_rows and len(served) == n_rows
    row, sim = rows[-1], served[-1]
    assert row["outcome"] == "ok", row
    assert row["route"] == route
    # The ledger records the canonical model identity (docs/pricing.md), whatever spelling was sent.
    assert row["model"] == stack.gw.gateway.prices.canonical(model)
    assert sim["model"].endswith(model.split("/")[-1]) or model.endswith(sim["model"])
    for cls in CLASSES:
        assert row[cls] == sim["usage"][cls], (cls, row, sim)
    assert Decimal(row["cost_usd"]) == stack.price_of(model, sim["usage"])
    assert not row["estimated"]
    return row


def oai(stack: Stack, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)


def claude(stack: Stack, key: str = ALICE) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)


def bedrock(stack: Stack) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=stack.url,
        region_name="us-east-1",
        aws_access_key_id=ALICE_AKID,
        aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )


PROMPT = "Summarise the quarterly report in three bullet points, please. " * 5


def test_openai_chat_non_stream(stack: Stack) -> None:
    r = oai(stack).chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=40
    )
    completion = r.parse()
    row = assert_metered(stack, "test-model", route="chat.completions")
    assert completion.usage is not None and completion.usage.completion_tokens == row["output"]
    assert r.headers["x-tokenfuse-request-id"] == row["request_id"]
    assert Decimal(r.headers["x-tokenfuse-cost-usd"]) == Decimal(row["cost_usd"])
    assert row["key_name"] == "alice-droid" and row["principal"] == "alice" and row["workflow"] == "droid"


def test_openai_chat_stream_without_include_usage_is_unchanged(stack: Stack) -> None:
    chunks = list(
        oai(stack).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=30, stream=True
        )
    )
    # The gateway asked the upstream for usage; the client must not see that chunk.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    row = assert_metered(stack, "test-model", route="chat.completions")
    assert row["output"] > 0


def test_openai_chat_stream_with_include_usage(stack: Stack) -> None:
    chunks = list(
        oai(stack).chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    row = assert_metered(stack, "test-model", route="chat.completions")
    assert chunks[-1].usage.completion_tokens == row["output"]


def test_openai_responses_both_ways(stack: Stack) -> None:
    client = oai(stack, BOB)
    resp = client.responses.create(model="test-model", input=PROMPT, max_output_tokens=20)
    row = assert_metered(stack, "test-model", route="responses")
    assert resp.usage is not None and resp.usage.output_tokens == row["output"]
    events = list(client.responses.create(model="test-model", input=PROMPT, max_output_tokens=20, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")  # hit max_output_tokens
    row = assert_metered(stack, "test-model", route="responses", n_rows=2)
    assert row["key_name"] == "bob-batch"


def test_openai_embeddings(stack: Stack) -> None:
    emb = oai(stack).embeddings.create(model="test-model", input=["alpha beta gamma", "delta"])
    assert len(emb.data) == 2
    row = assert_metered(stack, "test-model", route="embeddings")
    assert row["output"] == 0 and row["input_uncached"] == emb.usage.prompt_tokens


def test_anthropic_messages_non_stream_with_cache(stack: Stack) -> None:
    client = claude(stack)
    system = [{"type": "text", "text": "You are a careful analyst. " * 40, "cache_control": {"type": "ephemeral"}}]
    msgs = [{"role": "user", "content": PROMPT}]
    first = client.messages.create(model="test-claude", max_tokens=50, system=system, messages=msgs)  # type: ignore[arg-type]
    row1 = assert_metered(stack, "test-claude", route="messages")
    assert row1["cache_write"] > 0 and row1["cache_read"] == 0
    assert first.usage.cache_creation_input_tokens == row1["cache_write"]
    client.messages.create(model="test-claude", max_tokens=50, system=system, messages=msgs)  # type: ignore[arg-type]
    row2 = assert_metered(stack, "test-claude", route="messages", n_rows=2)
    assert row2["cache_read"] == row1["cache_write"] and row2["cache_write"] == 0


def test_anthropic_messages_stream_1h_cache(stack: Stack) -> None:
    client = claude(stack)
    system = [
        {"type": "text", "text": "Long policy text. " * 60, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    with client.messages.stream(
        model="test-claude", max_tokens=64, system=system, messages=[{"role": "user", "content": PROMPT}]  # type: ignore[arg-type]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text
    row = assert_metered(stack, "test-claude", route="messages")
    assert row["cache_write_1h"] > 0
    assert final.usage.output_tokens == row["output"]


def test_anthropic_count_tokens_is_free(stack: Stack) -> None:
    n = claude(stack).messages.count_tokens(model="test-claude", messages=[{"role": "user", "content": PROMPT}])
    assert n.input_tokens > 0
    rows = stack.rows()
    assert rows[-1]["route"] == "count_tokens" and Decimal(rows[-1]["cost_usd"]) == 0
    assert rows[-1]["outcome"] == "ok"


def test_bedrock_converse_sigv4(stack: Stack) -> None:
    out = bedrock(stack).converse(
        modelId="test-claude",
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": 40},
    )
    row = assert_metered(stack, "test-claude", route="converse")
    assert out["usage"]["outputTokens"] == row["output"]
    assert stack.served()[-1]["auth"] == "sigv4"  # re-signed with the upstream's own credentials


def test_bedrock_converse_stream(stack: Stack) -> None:
    resp = bedrock(stack).converse_stream(
        modelId="test-claude", messages=[{"role": "user", "content": [{"text": PROMPT}]}]
    )
    events = list(resp["stream"])
    assert "metadata" in events[-1]
    row = assert_metered(stack, "test-claude", route="converse_stream")
    assert events[-1]["metadata"]["usage"]["outputTokens"] == row["output"]


MODEL_INVOKE = "anthropic.claude-3-haiku-20240307-v1:0"


def test_bedrock_invoke_and_invoke_stream(stack: Stack) -> None:
    client = bedrock(stack)
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    out = client.invoke_model(modelId=MODEL_INVOKE, body=json.dumps(body))
    payload = json.loads(out["body"].read())
    row = assert_metered(stack, MODEL_INVOKE, route="invoke")
    assert payload["usage"]["output_tokens"] == row["output"]
    stream = client.invoke_model_with_response_stream(modelId=MODEL_INVOKE, body=json.dumps(body))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in stream["body"] if "chunk" in e]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] > 0
    assert_metered(stack, MODEL_INVOKE, route="invoke_stream", n_rows=2)


def test_bedrock_bad_signature_is_401(stack: Stack) -> None:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=stack.url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key="wrong-secret",
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    with pytest.raises(client.exceptions.ClientError) as err:
        client.converse(modelId="test-claude", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)
    assert stack.served() == []
    assert stack.rows()[-1]["outcome"] == "unauthorized"


def test_unknown_key_and_unknown_route(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        oai(stack, "not-a-key").chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}]
        )
    # GET /v1/models is answered by the gateway itself and never recorded (tests/ops).
    assert claude(stack).models.list().data
    with pytest.raises(anthropic.NotFoundError):
        claude(stack).post("/v1/nothing", body={}, cast_to=object)
    assert stack.served() == []
    outcomes = [r["outcome"] for r in stack.rows()]
    assert outcomes == ["unauthorized", "not_found"]


def test_default_max_tokens_injected(stack: Stack) -> None:
    stack.sim_config(output_tokens=100_000)
    try:
        oai(stack).chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    finally:
        stack.sim_config(output_tokens=64)
    row = stack.rows()[-1]
    # defaults.max_tokens is 256 in the test config: the simulator obeyed the injected limit.
    assert row["output"] == 256
