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


AI_SDK_UA = "ai/6.0.325 ai-sdk/provider-utils/4.0.66 runtime/node.js/v20.20.2"
CODEX_UA = "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)"
OPENAI_PY_UA = "OpenAI/Python 1.99.0"


@pytest.mark.parametrize(
    ("setting", "user_agent", "status"),
    [
        ("auto", None, 429),
        ("auto", OPENAI_PY_UA, 429),
        ("auto", "OpenAI/JS 5.1.0", 429),
        ("auto", AI_SDK_UA, 400),
        ("auto", CODEX_UA, 400),
        ("auto", "codex_cli_rs/0.171.0 (Mac OS 15.0; arm64)", 400),
        (429, AI_SDK_UA, 429),
        (400, OPENAI_PY_UA, 400),
    ],
)
@pytest.mark.parametrize("kind", ["budget", "session_cap"])
def test_openai_quota_refusal_status_follows_the_setting_and_client(
    kind: str, setting: str | int, user_agent: str | None, status: int
) -> None:
    got, headers, body = refusal("openai", kind, "Budget 'team' refused", openai_status=setting, user_agent=user_agent)
    assert got == status
    # Only the status changes: the body and the no-retry header are the same for every client.
    assert body == refusal("openai", kind, "Budget 'team' refused")[2]
    assert ("x-should-retry", "false") in headers


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("budget", "session_cap")])
def test_other_refusals_ignore_the_quota_status_setting(kind: str) -> None:
    assert refusal("openai", kind, "x", openai_status=400, user_agent=CODEX_UA) == refusal("openai", kind, "x")
    assert refusal("anthropic", kind, "x", openai_status=400) == refusal("anthropic", kind, "x")


def test_unknown_quota_status_setting() -> None:
    with pytest.raises(ValueError, match="expected one of auto, 429, 400"):
        refusal("openai", "budget", "x", openai_status=403)


def test_openai_sdk_sends_a_400_budget_refusal_once_with_its_message() -> None:
    err, calls = openai_call(*refusal("openai", "budget", "Budget 'team' refused", openai_status=400))
    assert calls == 1 and err.status_code == 400
    assert "Budget 'team' refused" in err.message and err.code == "insufficient_quota"
