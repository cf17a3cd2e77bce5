"""The official clients (OpenAI and Anthropic SDKs, botocore) answered by one
canned response: how a refusal looks to a real caller, and how often it retries."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import anthropic as anthropic_sdk
import botocore.session
import httpx2 as httpx
import openai as openai_sdk
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError


def _canned_http(status: int, headers: list[tuple[str, str]], body: bytes) -> tuple[httpx.Client, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, headers=headers, content=body)

    return httpx.Client(transport=httpx.MockTransport(handler)), calls


def openai_call(status: int, headers: list[tuple[str, str]], body: bytes) -> tuple[openai_sdk.APIStatusError, int]:
    """The error the OpenAI SDK raises for this response, and how many requests it sent."""
    http, calls = _canned_http(status, headers, body)
    client = openai_sdk.OpenAI(api_key="sk-test", base_url="http://gw.test/v1", max_retries=2, http_client=http)
    with pytest.raises(openai_sdk.APIStatusError) as exc:
        client.with_options(timeout=5).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    return exc.value, len(calls)


def anthropic_call(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> tuple[anthropic_sdk.APIStatusError, int]:
    """The error the Anthropic SDK raises for this response, and how many requests it sent."""
    http, calls = _canned_http(status, headers, body)
    client = anthropic_sdk.Anthropic(api_key="tf-key", base_url="http://gw.test", max_retries=2, http_client=http)
    with pytest.raises(anthropic_sdk.APIStatusError) as exc:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    return exc.value, len(calls)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@functools.cache
def _boto_client(mode: str) -> Any:
    return botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url="http://gw.test",
        aws_access_key_id="AKIATEST",
        aws_secret_access_key="secret",
        config=Config(retries={"mode": mode, "max_attempts": 4}),
    )


def boto_call(status: int, headers: list[tuple[str, str]], body: bytes, mode: str) -> tuple[ClientError, int]:
    """The error botocore (retry `mode`) raises for this Converse response, and how many requests it sent."""
    client = _boto_client(mode)
    calls: list[int] = []

    def respond(request: Any, **_: Any) -> AWSResponse:
        calls.append(1)
        return AWSResponse(request.url, status, dict(headers), _Raw(body))

    event = "before-send.bedrock-runtime.Converse"
    client.meta.events.register(event, respond, unique_id="tokenfuse-test")
    try:
        with pytest.raises(ClientError) as exc:
            client.converse(
                modelId="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                messages=[{"role": "user", "content": [{"text": "x"}]}],
            )
    finally:
        client.meta.events.unregister(event, unique_id="tokenfuse-test")
    return exc.value, len(calls)
