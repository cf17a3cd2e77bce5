"""Which client headers reach the provider.

An allowlist per protocol, not a denylist: a header the gateway has not
reviewed may change who pays (``OpenAI-Organization``, ``OpenAI-Project``) or
what a call costs (a priority service tier, latency-optimised inference, a
guardrail billed per text unit), so it is dropped unless listed here. The
lists hold what the official SDKs send and the provider needs; the SDKs'
telemetry headers (``x-stainless-*``, ``amz-sdk-*``) pass as a prefix.

Headers that select a billed option are not dropped silently, because the
caller asked for a behaviour: the request is refused, naming the header, unless
the operator allows priced options (``limits.allow_priced_options``).
"""

from __future__ import annotations

from collections.abc import Mapping

_COMMON = frozenset({"content-type", "accept", "user-agent"})

ALLOWED: dict[str, frozenset[str]] = {
    "openai": _COMMON | {"openai-beta", "idempotency-key"},
    "anthropic": _COMMON | {"anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access"},
    "bedrock": _COMMON | {"x-amzn-bedrock-accept", "x-amzn-bedrock-trace"},
}
ALLOWED_PREFIXES: dict[str, tuple[str, ...]] = {
    "openai": ("x-stainless-",),
    "anthropic": ("x-stainless-",),
    "bedrock": ("amz-sdk-",),
}

# Header -> values that are not dearer than the standard rate (anything else is
# a billed option). None: every value is a billed option.
PRICED: dict[str, dict[str, frozenset[str] | None]] = {
    "openai": {},
    "anthropic": {},
    "bedrock": {
        "x-amzn-bedrock-performanceconfig-latency": frozenset({"standard"}),
        "x-amzn-bedrock-service-tier": frozenset({"default", "standard", "flex"}),
        "x-amzn-bedrock-guardrailidentifier": None,
        "x-amzn-bedrock-guardrailversion": None,
    },
}


def forwardable(protocol: str, headers: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(headers to forward, descriptions of billed options the caller asked for).

    `headers` are lower-cased; the billed options are forwarded too, so the
    gateway either refuses the request or sends it as the caller asked.
    """
    allowed = ALLOWED[protocol]
    prefixes = ALLOWED_PREFIXES[protocol]
    priced = PRICED[protocol]
    out: dict[str, str] = {}
    options: list[str] = []
    for name, value in headers.items():
        if name in allowed or name.startswith(prefixes):
            out[name] = value
        elif name in priced:
            cheap = priced[name]
            if cheap is None or value.strip().lower() not in cheap:
                options.append(f"header {name}: {value.strip()[:64]}")
            out[name] = value
    return out, options
