"""Every route through the official SDKs, pointed straight at the simulator."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import boto3
import openai
import pytest
from botocore.config import Config

from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.tokens import prompt_tokens

PROMPT = "Summarise the design of a metering gateway in one line."  # 55 bytes
PROMPT_TOKENS = prompt_tokens(len(PROMPT.encode()))


def served(sim: SimulatorThread) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = sim.app.served.as_dict()["requests"]
    return records


def only(sim: SimulatorThread) -> dict[str, Any]:
    records = served(sim)
    assert len(records) == 1
    return records[0]


@pytest.fixture
def oai(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def claude(sim: SimulatorThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)


@pytest.fixture
def bedrock(sim: SimulatorThread) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=sim.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}),
    )


# --- OpenAI -------------------------------------------------------------------


def test_chat_completion(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert result.usage is not None
    assert result.usage.prompt_tokens == PROMPT_TOKENS
    assert result.usage.completion_tokens == 64
    assert len((result.choices[0].message.content or "").encode()) == 4 * 64
    record = only(sim)
    assert record["route"] == "chat.completions" and record["auth"] == "bearer" and record["complete"]
    assert record["usage"]["input_uncached"] == PROMPT_TOKENS and record["usage"]["output"] == 64


def test_chat_stream_with_and_without_usage(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]
    plain = list(oai.chat.completions.create(model="gpt-4o", messages=messages, stream=True, max_tokens=9))
    assert all(chunk.usage is None for chunk in plain)
    assert (
        "".join(c.choices[0].delta.content or "" for c in plain if c.choices)
        == "Lorem ipsum dolor sit amet, consecte"
    )
    assert plain[-1].choices[0].finish_reason == "length"
    counted = list(
        oai.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert counted[-1].choices == []
    assert counted[-1].usage is not None and counted[-1].usage.completion_tokens == 64
    first, second = served(sim)
    assert first["usage"]["output"] == 9 and first["stream"] and first["complete"]
    assert second["usage"]["output"] == 64


def test_chat_reasoning_tokens_are_part_of_completion(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    sim.app.config = sim.app.config.updated({"reasoning_tokens": 10})
    result = oai.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": PROMPT}])
    assert result.usage is not None and result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens == 64
    assert result.usage.completion_tokens_details.reasoning_tokens == 10
    assert len((result.choices[0].message.content or "").encode()) == 4 * 54


def test_chat_automatic_prefix_caching(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    long_prompt = "abcd" * 1500
    for _ in range(2):
        result = oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": long_prompt}]
        )
    assert result.usage is not None and result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens == 1500
    assert result.usage.prompt_tokens_details.cached_tokens == 1408
    assert served(sim)[1]["usage"]["cache_read"] == 1408
    assert served(sim)[1]["usage"]["input_uncached"] == 92


def test_responses(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    result = oai.responses.create(model="gpt-4.1", instructions="Be brief.", input=PROMPT)
    assert result.status == "completed"
    assert result.usage is not None
    assert result.usage.input_tokens == prompt_tokens(len(PROMPT) + 9)
    assert result.usage.output_tokens == 64
    assert len(result.output_text) == 256
    assert only(sim)["route"] == "responses"


def test_responses_stream(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-4.1", input=PROMPT, stream=True, max_output_tokens=20))
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.usage is not None and final.response.usage.output_tokens == 20
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text) == 80
    assert only(sim)["usage"]["output"] == 20


def test_embeddings_default_base64_and_floats(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input=["abcd", "abcdefgh"])
    assert result.usage.prompt_tokens == 3 and result.usage.total_tokens == 3
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input="abc", encoding_format="float", dimensions=3
    )
    assert len(floats.data[0].embedding) == 3
    assert [r["usage"]["input_uncached"] for r in served(sim)] == [3, 1]


def test_openai_errors_raise_the_sdk_exceptions(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-sim-fault-429", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers={"x-sim-fault": "500"}
        )
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")


# --- Anthropic ------------------------------------------------------------------


def cached_system(ttl: str | None = None) -> Any:
    control: dict[str, str] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return [{"type": "text", "text": "S" * 4000, "cache_control": control}]


def test_messages_cache_write_then_read(sim: SimulatorThread, claude: anthropic.Anthropic) -> None:
    kwargs: Any = {
        "model": "claude-test-sonnet",
        "max_tokens": 100,
        "system": cached_system(),
        "messages": [{"role": "user", "content": PROMPT}],
    }
    first = claude.messages.create(**kwargs)
    second = claude.messages.create(**kwargs)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (1000, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 1000)
    assert first.usage.input_tokens == PROMPT_TOKENS
    assert first.usage.output_tokens == 64 and first.stop_reason == "end_turn"
    records = served(sim)
    assert records[0]["usage"]["cache_write"] == 1000 and records[1]["usage"]["cache_read"] == 1000


def test_messages_stream_one_hour_write(sim: SimulatorThread, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-test-opus",
        max_tokens=30,
        system=cached_system("1h"),
        messages=[{"role": "user", "content": PROMPT}],
    ) as stream:
        final = stream.get_final_message()
        text = "".join(b.text for b in final.content if b.type == "text")
    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 1000
    assert final.usage.output_tokens == 30 and final.stop_reason == "max_tokens"
    assert len(text) == 120
    record = only(sim)
    assert record["usage"]["cache_write_1h"] == 1000 and record["usage"]["output"] == 30 and record["stream"]


def test_messages_raw_stream_events(sim: SimulatorThread, claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(
            model="claude-test-haiku",
            max_tokens=50,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.output_tokens == 1
    assert delta.type == "message_delta" and delta.usage.output_tokens == 50


def test_count_tokens_is_free(sim: SimulatorThread, claude: anthropic.Anthropic) -> None:
    result = claude.messages.count_tokens(
        model="claude-test-sonnet", messages=[{"role": "user", "content": PROMPT}]
    )
    assert result.input_tokens == PROMPT_TOKENS
    record = only(sim)
    assert record["route"] == "count_tokens" and sum(record["usage"].values()) == 0


def test_anthropic_errors(sim: SimulatorThread, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model="claude-sim-fault-429", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model="claude-x",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"max_tokens": 0},
        )


# --- Bedrock --------------------------------------------------------------------


CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def converse_messages(cache: bool = False) -> Any:
    content: list[Any] = [{"text": "S" * 4000}]
    if cache:
        content.append({"cachePoint": {"type": "default"}})
    content.append({"text": PROMPT})
    return [{"role": "user", "content": content}]


def test_converse_with_cache_point(sim: SimulatorThread, bedrock: Any) -> None:
    first = bedrock.converse(
        modelId=CLAUDE, messages=converse_messages(True), inferenceConfig={"maxTokens": 40}
    )
    second = bedrock.converse(
        modelId=CLAUDE, messages=converse_messages(True), inferenceConfig={"maxTokens": 40}
    )
    assert first["usage"]["cacheWriteInputTokens"] == 1000 and first["usage"]["cacheReadInputTokens"] == 0
    assert second["usage"]["cacheReadInputTokens"] == 1000
    assert first["usage"]["inputTokens"] == prompt_tokens(4000 + len(PROMPT)) - 1000
    assert first["usage"]["outputTokens"] == 40 and first["stopReason"] == "max_tokens"
    assert "latencyMs" in first["metrics"]
    records = served(sim)
    assert (
        records[0]["auth"] == "sigv4" and records[0]["route"] == "converse" and records[0]["model"] == CLAUDE
    )


def test_converse_stream_with_arn_model_id(sim: SimulatorThread, bedrock: Any) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-haiku-4-5-v1:0"
    result = bedrock.converse_stream(modelId=arn, messages=converse_messages())
    events = list(result["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    metadata = events[-1]["metadata"]
    assert metadata["usage"]["outputTokens"] == 64 and len(text) == 256
    assert metadata["usage"]["inputTokens"] == prompt_tokens(4000 + len(PROMPT))
    record = only(sim)
    assert record["model"] == arn and record["route"] == "converse-stream" and record["complete"]


def invoke_claude_body(max_tokens: int = 50) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "system": [{"type": "text", "text": "S" * 4000, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": PROMPT}],
        }
    )


def test_invoke_claude_body_and_headers(sim: SimulatorThread, bedrock: Any) -> None:
    result = bedrock.invoke_model(modelId=CLAUDE, body=invoke_claude_body())
    headers = result["ResponseMetadata"]["HTTPHeaders"]
    body = json.loads(result["body"].read())
    assert (
        body["usage"]["input_tokens"] == PROMPT_TOKENS
        and body["usage"]["cache_creation_input_tokens"] == 1000
    )
    assert headers["x-amzn-bedrock-input-token-count"] == str(PROMPT_TOKENS)
    assert headers["x-amzn-bedrock-output-token-count"] == "50"
    assert headers["x-amzn-bedrock-cache-write-input-token-count"] == "1000"
    assert headers["x-amzn-bedrock-cache-read-input-token-count"] == "0"


def test_invoke_stream_claude(sim: SimulatorThread, bedrock: Any) -> None:
    bedrock.invoke_model(modelId=CLAUDE, body=invoke_claude_body())
    result = bedrock.invoke_model_with_response_stream(modelId=CLAUDE, body=invoke_claude_body(20))
    payloads = [json.loads(e["chunk"]["bytes"]) for e in result["body"]]
    metrics = payloads[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["cacheReadInputTokenCount"] == 1000 and metrics["outputTokenCount"] == 20
    assert metrics["inputTokenCount"] == PROMPT_TOKENS
    assert payloads[0]["type"] == "message_start"
    assert served(sim)[1]["usage"]["cache_read"] == 1000


def test_invoke_nova_and_llama(sim: SimulatorThread, bedrock: Any) -> None:
    nova = {
        "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
        "inferenceConfig": {"maxTokens": 8},
    }
    result = json.loads(
        bedrock.invoke_model(modelId="amazon.nova-lite-v1:0", body=json.dumps(nova))["body"].read()
    )
    assert result["usage"]["inputTokens"] == PROMPT_TOKENS and result["usage"]["outputTokens"] == 8
    stream = bedrock.invoke_model_with_response_stream(
        modelId="us.amazon.nova-pro-v1:0", body=json.dumps(nova)
    )
    last = json.loads(list(stream["body"])[-1]["chunk"]["bytes"])
    assert last["metadata"]["usage"]["outputTokens"] == 8
    assert last["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 8
    llama = {"prompt": PROMPT, "max_gen_len": 6}
    result = json.loads(
        bedrock.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=json.dumps(llama))["body"].read()
    )
    assert (result["prompt_token_count"], result["generation_token_count"]) == (PROMPT_TOKENS, 6)
    stream = bedrock.invoke_model_with_response_stream(
        modelId="meta.llama3-8b-instruct-v1:0", body=json.dumps(llama)
    )
    chunks = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
    assert "".join(c["generation"] for c in chunks) == "Lorem ipsum dolor sit am"
    assert [r["usage"]["output"] for r in served(sim)] == [8, 8, 6, 6]


def test_bedrock_errors_are_client_errors(sim: SimulatorThread, bedrock: Any) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as throttled:
        bedrock.converse(modelId="anthropic.claude-sim-fault-429", messages=converse_messages())
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(ClientError) as invalid:
        bedrock.invoke_model(modelId=CLAUDE, body=json.dumps({"max_tokens": 5, "messages": []}))
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as broken:
        bedrock.invoke_model(modelId=CLAUDE, body=b"{not json")
    assert broken.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
