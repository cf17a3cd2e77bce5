"""What a billing line is: Bedrock usage types and operations -> model and token class.

AWS names Bedrock token usage in two generations, and both appear in the same
export:

* first-party usage types, ``<REGION>-<Model>-<class>[-<tier>]``, e.g.
  ``USE1-Claude4.6Opus-input-tokens``, ``USE1-Claude4.6Opus-cache-read-input-token-count``,
  ``USE1-Claude4.6Opus-output-tokens-cross-region-global``, ``...-mantle-input-tokens-standard``;
* Marketplace-billed models, ``<REGION>-MP:<REGION>_<Class>-Units``, e.g.
  ``USW2-MP:USW2_InputTokenCount-Units``, ``..._CacheReadInputTokenCount_Global-Units``,
  ``..._input_tokens_standard-Units``. These carry no model name: the model comes
  from the product name (or product code) of the line.

The patterns are kept as plain regular expressions over the lower-cased usage type
so that the warehouse SQL printed by ``--print-sql`` classifies exactly like the
Python code does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

# (token class, regex over lower(usage_type)). Cache patterns come first because
# "cache-read-input-token-count" also contains "input-token".
TOKEN_CLASS_PATTERNS: tuple[tuple[str, str], ...] = (
    ("cache_write_1h", r"cache[-_ ]?write.*(1h|1-hour|60m|1 hour)|cachewrite.*1h"),
    # Azure meters "gpt 4o 1120 cached Inp glbl"; Vertex "... Cached Input Tokens"; AWS "cache-read".
    ("cache_read", r"cache[-_ ]?read|cacheread|cached[-_ ]?(content[-_ ]?)?(inp|input|in\b)"),
    ("cache_write", r"cache[-_ ]?write|cachewrite"),
    # Azure "-Outp-glbl" / "Output global" / GPT-5 "opt Gl"; Vertex "Output Tokens" / "Text Output".
    ("output", r"output[-_ ]?(text[-_ ]?)?tokens?|outputtokencount|output-token-count|\boutp\b|\bopt\b|text[-_ ]output|"
     r"output[-_ ](glbl|global|regnl|regional|dzone|dz|gl)\b"),
    # Azure "-Inp-glbl" / "Input global" / "Inpt Glbl"; Vertex "Input Tokens" / "Input Text Tokens".
    ("input_uncached", r"input[-_ ]?(text[-_ ]?)?tokens?|inputtokencount|input-token-count|\binpt?\b|text[-_ ]input|"
     r"input[-_ ](glbl|global|regnl|regional|dzone|dz|gl)\b"),
)
INFERENCE_OPERATION_PATTERN = r"^(invokemodel|converse)|inference"
INFERENCE_OPERATION = re.compile(INFERENCE_OPERATION_PATTERN)

_COMPILED = tuple((cls, re.compile(p)) for cls, p in TOKEN_CLASS_PATTERNS)

MARKETPLACE_PATTERN = r"-mp:"
_REGION_PREFIX = re.compile(r"^[a-z]{2,4}\d?-", re.IGNORECASE)
# Where the model name ends in a first-party usage type.
_CLASS_START = re.compile(
    r"-(mantle-)?(input|output|cache)[-_]", re.IGNORECASE
)
_TIER_WORDS = ("flex", "priority", "standard", "batch", "global", "cross-region", "crossregion", "latency-optimized")

COMPUTE_SERVICES: frozenset[str] = frozenset(
    {
        "amazonec2",
        "amazon elastic compute cloud",
        "virtual machines",
        "compute engine",
        "amazonecs",
        "amazon elastic container service",
        "amazoneks",
        "amazon elastic kubernetes service",
        "awslambda",
        "aws lambda",
        "awsfargate",
        "aws fargate",
    }
)
BEDROCK_SERVICES: frozenset[str] = frozenset({"amazonbedrock", "amazon bedrock", "bedrock"})
# Model-API services as ``tokenfuse export`` names them: token rows there are inference too.
LLM_API_SERVICES: frozenset[str] = frozenset({"anthropic", "openai"})
# Azure and Google Cloud AI inference services as their FOCUS exports name them (ServiceName,
# lower-cased). Token meters under them are inference; see docs/detection.md for the sources.
CLOUD_AI_SERVICES: frozenset[str] = frozenset(
    {
        "azure openai", "azure openai service", "foundry models", "azure ai foundry", "microsoft foundry",
        "azure ai services", "cognitive services", "azure ai foundry models",
        "vertex ai", "gemini api", "generative language api", "vertex ai model garden",
    }
)
# A Marketplace listing is its own "service", named after the model or its publisher
# ("Claude Sonnet 4.5 (Amazon Bedrock Edition)", "Anthropic Claude", "OpenAI GPT-5").
MODEL_SERVICE_PATTERN = r"claude|anthropic|openai|gpt|gemini|llama|mistral|deepseek|cohere"
USAGE_CHARGES: frozenset[str] = frozenset({"usage", "discountedusage", "savingsplancoveredusage"})


def token_class(usage_type: str | None, operation: str | None = None) -> str | None:
    """The token class a usage type bills, or None when it is not token usage."""
    if not usage_type:
        return None
    ut = usage_type.lower()
    for cls, rx in _COMPILED:
        if rx.search(ut):
            return cls
    return None


def is_marketplace(usage_type: str | None) -> bool:
    return bool(usage_type) and MARKETPLACE_PATTERN in (usage_type or "").lower()


def usage_type_model(usage_type: str) -> str | None:
    """The model name embedded in a first-party usage type, e.g. ``Claude4.6Opus``."""
    if is_marketplace(usage_type):
        return None
    body = _REGION_PREFIX.sub("", usage_type, count=1)
    m = _CLASS_START.search(body)
    if not m:
        return None
    name = body[: m.start()]
    lowered = name.lower()
    for word in _TIER_WORDS:
        if lowered.endswith("-" + word):
            name = name[: -(len(word) + 1)]
            lowered = name.lower()
    return name or None


# Where the model name ends in an Azure meter or a Vertex SKU description.
_METER_CLASS_START = re.compile(
    r"[-_ ](cached|cache|inpt?|input|outp|output|opt|text|txt|aud)([-_ ]|$)", re.IGNORECASE
)
_METER_TIERS = ("batch", "pp", "glbl", "global", "regnl", "regional", "dz", "dzone", "gl")


def meter_model(meter: str) -> str | None:
    """The model in an Azure meter (``gpt-4o-0806-Inp-glbl Tokens`` -> ``gpt-4o-0806``) or a
    Vertex SKU description (``Gemini 2.5 Pro Cached Input Tokens`` -> ``Gemini 2.5 Pro``)."""
    m = _METER_CLASS_START.search(meter)
    if not m or m.start() == 0:
        return None
    name = meter[: m.start()].strip(" -_")
    words = re.split(r"([-_ ])", name)
    while len(words) > 2 and words[-1].lower() in _METER_TIERS:
        words = words[:-2]
    return "".join(words) or None


_CLAUDE_TIERS = ("opus", "sonnet", "haiku", "instant")


def canonical_model(name: str | None) -> str | None:
    """One key for a model however it is spelt: usage type, model id or product name.

    ``Claude4.5Sonnet``, ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``,
    ``claude-sonnet-4-5`` and ``Claude Sonnet 4.5 (Amazon Bedrock Edition)`` all give
    ``claude-sonnet-4.5``; ``claude-3-5-sonnet-20240620`` gives ``claude-sonnet-3.5``.
    """
    if not name:
        return None
    s = name.lower().strip()
    s = re.sub(r"\(.*?\)", " ", s)  # "(Amazon Bedrock Edition)"
    s = re.sub(r"^(us|eu|apac|ap|global|jp|au|ca|us-gov)\.", "", s)
    s = re.sub(r"^[a-z0-9-]+\.(?=[a-z])", "", s) if "." in s.split("-")[0] else s  # provider prefix
    s = re.sub(r"-v\d+(:\d+)?$", "", s)  # -v1:0
    s = re.sub(r"[-_ ]?(20\d{6})\b", "", s)  # release date
    if "claude" in s:
        tier = next((t for t in _CLAUDE_TIERS if t in s), "")
        rest = s.replace("claude", " ").replace(tier, " ") if tier else s.replace("claude", " ")
        nums = re.findall(r"\d+", rest)
        version = ".".join(nums[:2]) if nums else ""
        parts = ["claude"] + ([tier] if tier else []) + ([version] if version else [])
        return "-".join(parts)
    key = re.sub(r"[^a-z0-9.]+", "", s)
    return key or None


_CACHING_FAMILIES = re.compile(r"^(gpt4o|gpt4\.1|gpt5|o1|o3|o4|gemini(1\.5|[2-9]))")


def model_supports_caching(model_key: str | None) -> bool:
    """Prompt caching is offered for Claude 3.5+, Nova, GPT-4o and later OpenAI models, Gemini 1.5+."""
    if not model_key:
        return False
    if _CACHING_FAMILIES.match(model_key):
        return True
    if model_key.startswith("claude"):
        m = re.search(r"(\d+)(?:\.(\d+))?$", model_key)
        if not m:
            return False
        major = int(m.group(1))
        minor = int(m.group(2) or 0)
        return (major, minor) >= (3, 5)
    return model_key.startswith("nova")


_UNIT_MULTIPLIERS: tuple[tuple[re.Pattern[str], Decimal], ...] = (
    (re.compile(r"(^|[^a-z])(1m|1,000,000|1000000|million|mtok)"), Decimal(1_000_000)),
    (re.compile(r"(^|[^a-z])(1k|1,000|1000|thousand|ktok)"), Decimal(1000)),
)


def unit_multiplier(pricing_unit: str | None) -> Decimal:
    """Tokens per billed unit: ``1K tokens`` -> 1000, ``Units``/``Tokens`` -> 1."""
    if not pricing_unit:
        return Decimal(1)
    u = pricing_unit.lower().strip()
    for rx, mult in _UNIT_MULTIPLIERS:
        if rx.search(u):
            return mult
    return Decimal(1)


_MODEL_SERVICE = re.compile(MODEL_SERVICE_PATTERN)


def is_cloud_ai(service: str | None) -> bool:
    """An Azure / Google Cloud AI service, or a Marketplace listing named after a model."""
    svc = (service or "").lower().strip()
    return svc in CLOUD_AI_SERVICES or bool(_MODEL_SERVICE.search(svc))


def service_kind(service: str | None, usage_type: str | None, operation: str | None) -> str:
    """``inference`` (token usage), ``bedrock`` (other Bedrock lines), ``compute`` or ``other``."""
    svc = (service or "").lower().strip()
    cls = token_class(usage_type, operation)
    if cls is not None and (
        svc in BEDROCK_SERVICES or svc in LLM_API_SERVICES or is_marketplace(usage_type) or "bedrock" in svc
        or is_cloud_ai(svc)
    ):
        return "inference"
    if svc in BEDROCK_SERVICES or "bedrock" in svc:
        # A model-invocation operation is inference even when its usage type is a spelling
        # we do not know yet: its dollars count, its token class stays unknown.
        if operation and INFERENCE_OPERATION.search(operation.lower()):
            return "inference"
        return "bedrock"
    if svc in COMPUTE_SERVICES:
        return "compute"
    return "other"


@dataclass(frozen=True, slots=True)
class LineKind:
    kind: str  # inference | bedrock | compute | other
    token_class: str | None
    model: str | None  # canonical key, e.g. claude-sonnet-4.5
    model_label: str | None  # as the bill spells it


def classify(
    service: str | None, usage_type: str | None, operation: str | None, product: str | None
) -> LineKind:
    kind = service_kind(service, usage_type, operation)
    if kind != "inference":
        return LineKind(kind, None, None, None)
    cls = token_class(usage_type, operation)
    aws = (service or "").lower().strip() in BEDROCK_SERVICES or is_marketplace(usage_type)
    if aws or usage_type is None:
        label = None if usage_type is None else usage_type_model(usage_type)
    else:
        label = meter_model(usage_type)
    if label is None:
        label = product
    return LineKind(kind, cls, canonical_model(label), label)
