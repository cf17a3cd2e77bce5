"""The gateway's own refusals, each in the caller's protocol.

One table: for each kind of refusal and each protocol, the HTTP status and
error type the official SDK maps best. Refusals a retry cannot fix (budget,
kill switch, session cap, bad input, auth) are marked non-retryable: the
OpenAI and Anthropic SDKs honour ``x-should-retry: false``; botocore ignores
that header and retries throttling codes, 429 and 5xx, so Bedrock refusals
use exceptions it does not retry (docs/protocols.md has the table).

OpenAI-compatible clients disagree about budget refusals: the Vercel AI SDK
retries every 429 whatever the headers say, and Codex CLI replaces an
``insufficient_quota`` 429 by its own text without the budget's name. Both
show a 400 body and send it once, so ``server.openai_refusal_status`` picks
429 or 400, or ``auto``: 400 for those clients, 429 for the rest
(docs/gateway.md has the clients x behaviour table).
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

OPENAI_REFUSAL_STATUSES: tuple[str | int, ...] = ("auto", 429, 400)
# Refusals whose OpenAI status server.openai_refusal_status chooses.
_QUOTA_KINDS = frozenset({"budget", "session_cap"})
# User-Agent marks of clients that retry or hide a 429 budget refusal (measured
# with ai 6.0.325 + @ai-sdk/openai 3.0.141 and @openai/codex 0.171.0; tests/clients).
_CLIENTS_NEEDING_400 = ("ai-sdk/", "codex_")


def openai_quota_status(setting: str | int, user_agent: str | None) -> int:
    """The HTTP status of an OpenAI budget or session-cap refusal for this client."""
    if setting == "auto":
        ua = (user_agent or "").lower()
        return 400 if any(mark in ua for mark in _CLIENTS_NEEDING_400) else 429
    if setting in (400, 429):
        return int(setting)
    raise ValueError(f"openai_refusal_status {setting!r}: expected one of auto, 429, 400")


def refusal(
    protocol: str,
    kind: str,
    message: str,
    *,
    openai_status: str | int = "auto",
    user_agent: str | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) refusing a request of `protocol` for reason `kind`.

    ``openai_status`` is ``server.openai_refusal_status`` and ``user_agent`` the
    caller's; they change only the status of OpenAI budget and session-cap
    refusals, never the body."""
    if kind not in KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}; expected one of {', '.join(KINDS)}")
    retryable = kind in RETRYABLE
    if protocol == "openai":
        status, error_type, code = _OPENAI[kind]
        if kind in _QUOTA_KINDS:
            status = openai_quota_status(openai_status, user_agent)
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
