"""The gateway's own refusals, each in the caller's protocol.

One table: for each kind of refusal and each protocol, the HTTP status and
error type the official SDK maps best. Refusals a retry cannot fix (budget,
kill switch, session cap, bad input, auth) are marked non-retryable: the
OpenAI and Anthropic SDKs honour ``x-should-retry: false``; botocore ignores
that header and retries throttling codes, 429 and 5xx, so Bedrock refusals
use exceptions it does not retry (docs/protocols.md has the table).
"""

from __future__ import annotations

from tokenfuse.protocols import anthropic, bedrock, openai

KINDS: tuple[str, ...] = (
    "budget",
    "killed",
    "session_cap",
    "unauthorized",
    "not_found",
    "bad_request",
    "too_large",
    "unpriced_model",
    "upstream_unavailable",
    "counters_unavailable",
    "upstream_timeout",
    "internal",
    "upstream_failed",
)

# kind -> (status, error type, code or None); code is OpenAI's `error.code`.
_OPENAI: dict[str, tuple[int, str, str | None]] = {
    "budget": (429, "insufficient_quota", "insufficient_quota"),
    "killed": (403, "permission_error", "key_disabled"),
    "session_cap": (429, "insufficient_quota", "session_cap_reached"),
    "unauthorized": (401, "invalid_request_error", "invalid_api_key"),
    "not_found": (404, "invalid_request_error", "unknown_url"),
    "bad_request": (400, "invalid_request_error", None),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "unpriced_model": (400, "invalid_request_error", "model_not_priced"),
    "upstream_unavailable": (502, "server_error", "upstream_unavailable"),
    "counters_unavailable": (503, "server_error", "counters_unavailable"),
    "upstream_timeout": (504, "server_error", "upstream_timeout"),
    "internal": (500, "server_error", "gateway_internal_error"),
    "upstream_failed": (502, "server_error", "upstream_failed_after_send"),
}

_ANTHROPIC: dict[str, tuple[int, str]] = {
    "budget": (402, "billing_error"),
    "killed": (403, "permission_error"),
    "session_cap": (402, "billing_error"),
    "unauthorized": (401, "authentication_error"),
    "not_found": (404, "not_found_error"),
    "bad_request": (400, "invalid_request_error"),
    "too_large": (413, "request_too_large"),
    "unpriced_model": (400, "invalid_request_error"),
    "upstream_unavailable": (502, "api_error"),
    "counters_unavailable": (503, "api_error"),
    "upstream_timeout": (504, "timeout_error"),
    "internal": (500, "api_error"),
    "upstream_failed": (502, "api_error"),
}

_BEDROCK: dict[str, tuple[int, str]] = {
    "budget": (400, "ServiceQuotaExceededException"),
    "killed": (403, "AccessDeniedException"),
    "session_cap": (400, "ServiceQuotaExceededException"),
    "unauthorized": (403, "UnrecognizedClientException"),
    "not_found": (404, "ResourceNotFoundException"),
    "bad_request": (400, "ValidationException"),
    "too_large": (413, "ValidationException"),
    "unpriced_model": (400, "ValidationException"),
    "upstream_unavailable": (503, "ServiceUnavailableException"),
    "counters_unavailable": (503, "ServiceUnavailableException"),
    "upstream_timeout": (408, "ModelTimeoutException"),
    "internal": (424, "ModelErrorException"),
    "upstream_failed": (424, "ModelErrorException"),
}

# A timeout or a broken connection after the request went out is not retryable:
# the provider may have billed the generation, and the gateway charged its bound,
# so an automatic retry would pay for the same answer again.
RETRYABLE: frozenset[str] = frozenset({"upstream_unavailable", "counters_unavailable"})


def refusal(protocol: str, kind: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) refusing a request of `protocol` for reason `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}; expected one of {', '.join(KINDS)}")
    retryable = kind in RETRYABLE
    if protocol == "openai":
        status, error_type, code = _OPENAI[kind]
        return openai.error_response(status, error_type, message, retryable=retryable, code=code)
    if protocol == "anthropic":
        status, error_type = _ANTHROPIC[kind]
        return anthropic.error_response(status, error_type, message, retryable=retryable)
    if protocol == "bedrock":
        status, error_type = _BEDROCK[kind]
        return bedrock.error_response(status, error_type, message, retryable=retryable)
    raise ValueError(f"unknown protocol {protocol!r}; expected openai, anthropic or bedrock")


def table() -> dict[str, dict[str, tuple[int, str]]]:
    """kind -> protocol -> (status, error type), for docs and tests."""
    return {
        kind: {
            "openai": _OPENAI[kind][:2],
            "anthropic": _ANTHROPIC[kind],
            "bedrock": _BEDROCK[kind],
        }
        for kind in KINDS
    }
