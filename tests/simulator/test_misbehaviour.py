"""The settings that make the simulator misbehave as real providers and
networks do, through real sockets and the official SDKs: abandoned
generations billed in full, `n` choices, stored responses, server tools,
overrunning output limits and duplicate JSON keys."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config

from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.tokens import prompt_tokens

PROMPT = "hello there"
INPUT = prompt_tokens(len(PROMPT))
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
MESSAGES = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}]}
CONVERSE = {"messages": [{"role": "user", "content": [{"text": PROMPT}]}]}


def records(sim: SimulatorThread, count: int = 1) -> list[dict[str, Any]]:
    """The served records once ``count`` exist: an abandoned request is
    recorded by the server thread after the client has given up."""
    deadline = time.monotonic() + 5
    while sim.app.served.count < count and time.monotonic() < deadline:
        time.sleep(0.01)
    out: list[dict[str, Any]] = sim.app.served.as_dict()["requests"]
    return out


def settings(sim: SimulatorThread, **changes: Any) -> None:
    response = httpx.post(f"{sim.url}/_sim/config", json=changes)
    assert response.status_code == 200, response.text


@pytest.fixture
def client(sim: SimulatorThread) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=5)


@pytest.fixture
def oai(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def claude(sim: SimulatorThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)


def billed_in_full(record: dict[str, Any], output: int = 64, status: int = 200) -> None:
    assert record["usage"]["output"] == output and record["usage"]["input_uncached"] == INPUT
    assert record["complete"] is False and record["billed_after_disconnect"] is True
    assert record["status"] == status


# --- bill_abandoned ---------------------------------------------------------


def test_client_leaving_mid_stream_is_billed_in_full(sim: SimulatorThread, client: httpx.Client) -> None:
    settings(sim, bill_abandoned=True, chunk_delay_ms=20, chunk_tokens=1)
    received = b""
    with client.stream("POST", "/v1/messages", json={**MESSAGES, "stream": True}) as r:
        received = next(r.iter_raw())
    assert b"message_delta" not in received
    (record,) = records(sim)
    billed_in_full(record)


def test_without_bill_abandoned_a_client_leaving_mid_stream_is_billed_what_it_saw(
    sim: SimulatorThread, client: httpx.Client
) -> None:
    settings(sim, chunk_delay_ms=20, chunk_tokens=1)
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        next(r.iter_raw())
    (record,) = records(sim)
    assert record["complete"] is False and record["usage"]["output"] < 64
    assert record["billed_after_disconnect"] is False


def test_client_timing_out_before_the_answer_is_billed_in_full(sim: SimulatorThread) -> None:
    settings(sim, bill_abandoned=True, latency_ms=500)
    with httpx.Client(base_url=sim.url, timeout=0.1) as short, pytest.raises(httpx.ReadTimeout):
        short.post("/v1/chat/completions", json=CHAT)
    with httpx.Client(base_url=sim.url, timeout=0.1) as short, pytest.raises(httpx.ReadTimeout):
        short.post("/v1/chat/completions", json={**CHAT, "stream": True})
    first, second = records(sim, 2)
    billed_in_full(first, status=0)
    billed_in_full(second, status=0)
    assert (first["stream"], second["stream"]) == (False, True)


def test_a_client_that_waits_is_served_normally_with_bill_abandoned(
    sim: SimulatorThread, client: httpx.Client
) -> None:
    settings(sim, bill_abandoned=True, latency_ms=20)
    assert client.post("/v1/chat/completions", json=CHAT).json()["usage"]["completion_tokens"] == 64
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert b"[DONE]" in r.read()
    assert [(r["complete"], r["billed_after_disconnect"]) for r in records(sim, 2)] == [(True, False)] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_faults_are_billed_in_full_with_bill_abandoned(
    sim: SimulatorThread, client: httpx.Client, stream: bool
) -> None:
    settings(sim, bill_abandoned=True)
    body = {**CHAT, "stream": stream}
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-sim-fault": "break"}) as r:
            r.read()
    client.post("/v1/chat/completions", json=body, headers={"x-sim-fault": "garbage"})
    with httpx.Client(base_url=sim.url, timeout=0.3) as short, pytest.raises(httpx.ReadTimeout):
        with short.stream("POST", "/v1/chat/completions", json=body, headers={"x-sim-fault": "hang"}) as r:
            r.read()
    broken, garbage, hung = records(sim, 3)
    billed_in_full(broken)
    billed_in_full(garbage)
    billed_in_full(hung, status=200 if stream else 0)
    assert [r["fault"] for r in (broken, garbage, hung)] == ["break", "garbage", "hang"]


def test_bill_abandoned_by_header_for_bedrock(sim: SimulatorThread, client: httpx.Client) -> None:
    headers = {"x-sim-bill-abandoned": "1"}
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream(
            "POST", "/model/m-sim-fault-break/converse-stream", json=CONVERSE, headers=headers
        ) as r:
            r.read()
    (record,) = records(sim)
    billed_in_full(record)
    assert (
        client.post("/v1/messages", json=MESSAGES, headers={"x-sim-bill-abandoned": "x"}).status_code == 400
    )


# --- n ------------------------------------------------------------------------


def test_chat_n_choices_are_generated_and_billed(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], n=3, max_tokens=5
    )
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in result.choices)
    assert result.usage is not None and result.usage.completion_tokens == 15
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": PROMPT}],
        n=2,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        usage = chunk.usage or usage
    assert sorted(texts) == [0, 1] and all(len(t) == 28 for t in texts.values())
    assert usage is not None and usage.completion_tokens == 14
    assert [r["usage"]["output"] for r in records(sim, 2)] == [15, 14]
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], n=129)
    assert err.value.param == "n"


# --- stored responses and server tools --------------------------------------


def test_previous_response_id_bills_the_stored_conversation(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="gpt-4o", input="x" * 400, max_output_tokens=10)
    assert first.usage is not None and (first.usage.input_tokens, first.usage.output_tokens) == (100, 10)
    second = oai.responses.create(
        model="gpt-4o", input="y" * 40, previous_response_id=first.id, max_output_tokens=20
    )
    assert second.usage is not None and second.usage.input_tokens == 10 + 110
    third = oai.responses.create(
        model="gpt-4o", input="z" * 4, previous_response_id=second.id, max_output_tokens=1, stream=True
    )
    done = [e for e in third if e.type == "response.incomplete"]
    assert done[0].response.usage is not None and done[0].response.usage.input_tokens == 1 + 140
    assert [r["usage"]["input_uncached"] for r in records(sim, 3)] == [100, 120, 141]


def test_unknown_or_unstored_previous_response_is_a_400(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    unstored = oai.responses.create(model="gpt-4o", input="hi", store=False)
    for missing in ("resp_nope", unstored.id):
        with pytest.raises(openai.BadRequestError) as err:
            oai.responses.create(model="gpt-4o", input="hi", previous_response_id=missing)
        assert err.value.code == "previous_response_not_found"
        assert err.value.param == "previous_response_id"
        assert f"'{missing}' not found" in err.value.message
    refused = records(sim, 3)[1:]
    assert [r["status"] for r in refused] == [400, 400]
    assert all(sum(r["usage"].values()) == 0 for r in refused)


def test_server_tools_bill_extra_input(
    sim: SimulatorThread, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    plain = oai.responses.create(model="gpt-4o", input=PROMPT, tools=[{"type": "web_search"}])
    settings(sim, server_tool_tokens=1000)
    searched = oai.responses.create(model="gpt-4o", input=PROMPT, tools=[{"type": "web_search"}])
    assert plain.usage is not None and searched.usage is not None
    assert searched.usage.input_tokens == plain.usage.input_tokens + 1000
    tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]
    message = claude.messages.create(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": PROMPT}], tools=tools
    )
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    with claude.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": PROMPT}], tools=tools
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == message.usage.input_tokens > 1000
    assert final.usage.server_tool_use is not None and final.usage.server_tool_use.web_search_requests == 1
    uses = [(r["server_tool_uses"], r["usage"]["input_uncached"]) for r in records(sim, 4)]
    assert uses[0][0] == 0 and uses[1] == (1, uses[0][1] + 1000)
    assert uses[2] == uses[3] == (1, message.usage.input_tokens)


# --- overrun_factor -----------------------------------------------------------


def test_overrun_ignores_the_output_limit_in_every_protocol(
    sim: SimulatorThread, client: httpx.Client, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    settings(sim, overrun_factor=3)
    chat = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=5
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 15
    assert chat.choices[0].message.content is not None and len(chat.choices[0].message.content) == 60
    with claude.messages.stream(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        assert stream.get_final_message().usage.output_tokens == 300
    response = oai.responses.create(model="gpt-4o", input=PROMPT, max_output_tokens=4)
    assert response.usage is not None and response.usage.output_tokens == 12
    bedrock: Any = boto3.client(
        "bedrock-runtime",
        endpoint_url=sim.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}),
    )
    converse = bedrock.converse(
        modelId="amazon.nova-lite-v1:0",
        messages=CONVERSE["messages"],
        inferenceConfig={"maxTokens": 8},
    )
    assert converse["usage"]["outputTokens"] == 24
    # Without a limit there is nothing to overrun.
    assert client.post("/v1/chat/completions", json=CHAT).json()["usage"]["completion_tokens"] == 64
    assert [r["usage"]["output"] for r in records(sim, 5)] == [15, 300, 12, 24, 64]
    limited = client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 2}, headers={"x-sim-overrun-factor": "1"}
    )
    assert limited.json()["usage"]["completion_tokens"] == 2


# --- json_duplicates --------------------------------------------------------


def test_duplicate_model_keys_first_or_last(sim: SimulatorThread, client: httpx.Client) -> None:
    raw = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "model": "claude-opus-4-6"}'
    headers = {"content-type": "application/json"}
    assert (
        client.post("/v1/chat/completions", content=raw, headers=headers).json()["model"] == "claude-opus-4-6"
    )
    settings(sim, json_duplicates="first")
    assert client.post("/v1/chat/completions", content=raw, headers=headers).json()["model"] == "test-model"
    settings(sim, json_duplicates="last")
    by_header = client.post(
        "/v1/chat/completions", content=raw, headers={**headers, "x-sim-json-duplicates": "first"}
    )
    assert by_header.json()["model"] == "test-model"
    assert [r["model"] for r in records(sim, 3)] == ["claude-opus-4-6", "test-model", "test-model"]
    assert json.loads(client.get("/_sim/config").content)["json_duplicates"] == "last"
