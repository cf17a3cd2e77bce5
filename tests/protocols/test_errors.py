from __future__ import annotations

import json

import pytest
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

from tokenfuse.protocols.errors import KINDS, RETRYABLE, refusal, table

from .clients import anthropic_call, boto_call, openai_call

NON_RETRYABLE = [k for k in KINDS if k not in RETRYABLE]
BOTO_RETRIED_STATUS = {429, 500, 502, 503, 504, 509}
BOTO_RETRIED_CODES = set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) | set(
    TransientRetryableChecker._TRANSIENT_ERROR_CODES
)


@pytest.mark.parametrize("kind", KINDS)
def test_openai_refusals(kind: str) -> None:
    status, headers, body = refusal("openai", kind, f"refused: {kind}")
    err = json.loads(body)["error"]
    assert err["message"] == f"refused: {kind}"
    assert (status, err["type"]) == table()[kind]["openai"]
    assert ("content-type", "application/json") in headers
    assert (("x-should-retry", "false") in headers) == (kind not in RETRYABLE)


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_refusals(kind: str) -> None:
    status, headers, body = refusal("anthropic", kind, "no")
    obj = json.loads(body)
    assert obj["type"] == "error" and obj["error"]["message"] == "no"
    assert (status, obj["error"]["type"]) == table()[kind]["anthropic"]
    assert (("x-should-retry", "false") in headers) == (kind not in RETRYABLE)


@pytest.mark.parametrize("kind", KINDS)
def test_bedrock_refusals(kind: str) -> None:
    status, headers, body = refusal("bedrock", kind, "no")
    assert json.loads(body) == {"message": "no"}
    code = dict(headers)["x-amzn-errortype"]
    assert (status, code) == table()[kind]["bedrock"]


@pytest.mark.parametrize("kind", NON_RETRYABLE)
def test_botocore_does_not_retry_what_a_retry_cannot_fix(kind: str) -> None:
    status, headers, _ = refusal("bedrock", kind, "no")
    assert status not in BOTO_RETRIED_STATUS
    assert dict(headers)["x-amzn-errortype"] not in BOTO_RETRIED_CODES


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("kind", ["budget", "killed", "session_cap"])
def test_limit_refusals_are_never_5xx(protocol: str, kind: str) -> None:
    status, _, _ = refusal(protocol, kind, "no")
    assert 400 <= status < 500


def test_unknown_kind_or_protocol() -> None:
    with pytest.raises(ValueError, match="unknown refusal kind"):
        refusal("openai", "nope", "x")
    with pytest.raises(ValueError, match="unknown protocol"):
        refusal("gemini", "budget", "x")


@pytest.mark.parametrize("mode", ["legacy", "standard"])
@pytest.mark.parametrize("kind", NON_RETRYABLE)
def test_botocore_sends_each_non_retryable_refusal_once(kind: str, mode: str) -> None:
    status, headers, body = refusal("bedrock", kind, f"refused: {kind}")
    err, calls = boto_call(status, headers, body, mode)
    assert calls == 1
    assert err.response["Error"]["Code"] == dict(headers)["x-amzn-errortype"]
    assert err.response["Error"]["Message"] == f"refused: {kind}"


@pytest.mark.parametrize("kind", NON_RETRYABLE)
def test_openai_sdk_sends_each_non_retryable_refusal_once(kind: str) -> None:
    err, calls = openai_call(*refusal("openai", kind, f"refused: {kind}"))
    assert calls == 1 and err.status_code == table()[kind]["openai"][0]
    assert f"refused: {kind}" in err.message


@pytest.mark.parametrize("kind", NON_RETRYABLE)
def test_anthropic_sdk_sends_each_non_retryable_refusal_once(kind: str) -> None:
    err, calls = anthropic_call(*refusal("anthropic", kind, f"refused: {kind}"))
    assert calls == 1 and err.status_code == table()[kind]["anthropic"][0]
    assert f"refused: {kind}" in err.message
