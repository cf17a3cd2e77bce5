"""What the linter knows about LLM SDKs: client classes, methods, limit parameters.

Pure data plus small lookups; the analyzer decides what a piece of code *is*
and asks this module which parameter would bound it.
"""

from __future__ import annotations

# Client kinds the analyzer tracks through assignments.
OPENAI = "openai"
ANTHROPIC = "anthropic"
BEDROCK = "bedrock"
AWS_OTHER = "aws-other"
LITELLM = "litellm"
LITELLM_ROUTER = "litellm-router"
LANGCHAIN = "langchain"

OPENAI_CLIENTS = frozenset({"OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI"})
ANTHROPIC_CLIENTS = frozenset(
    {
        "Anthropic",
        "AsyncAnthropic",
        "AnthropicBedrock",
        "AsyncAnthropicBedrock",
        "AnthropicVertex",
        "AsyncAnthropicVertex",
    }
)
BEDROCK_CLIENT_TYPES = frozenset({"BedrockRuntimeClient"})
LANGCHAIN_MODELS = frozenset(
    {"ChatOpenAI", "AzureChatOpenAI", "ChatAnthropic", "ChatBedrock", "ChatBedrockConverse"}
)
# Abstract types a chat model is injected as; they are never constructed, only annotated.
LANGCHAIN_BASES = frozenset({"BaseChatModel", "BaseLanguageModel", "BaseLLM"})
LANGCHAIN_PACKAGES = (
    "langchain_openai",
    "langchain_anthropic",
    "langchain_aws",
    "langchain_community",
    "langchain_core",
    "langchain",
)
# Methods on a chat model that return another chat model with the same limits.
LANGCHAIN_DERIVE = frozenset(
    {"bind", "bind_tools", "with_structured_output", "with_retry", "with_config", "with_fallbacks"}
)
LANGCHAIN_RUN = frozenset(
    {"invoke", "ainvoke", "stream", "astream", "batch", "abatch", "predict", "apredict"}
)

# Parts of an attribute chain that do not change which endpoint is called.
TRANSPARENT_ATTRS = frozenset({"with_raw_response", "with_streaming_response", "beta"})
CLIENT_DERIVE = frozenset({"with_options", "copy"})

OPENAI_CHAT_METHODS = frozenset({"create", "parse", "stream"})
OPENAI_CHAT_LIMITS = ("max_completion_tokens", "max_tokens")
OPENAI_RESPONSES_LIMITS = ("max_output_tokens",)
OPENAI_COMPLETIONS_LIMITS = ("max_tokens",)
ANTHROPIC_LIMITS = ("max_tokens",)
LITELLM_FUNCTIONS = frozenset({"completion", "acompletion"})
LITELLM_LIMITS = ("max_tokens", "max_completion_tokens")
LANGCHAIN_LIMITS = ("max_tokens", "max_completion_tokens", "max_tokens_to_sample")

BEDROCK_CONVERSE = frozenset({"converse", "converse_stream"})
BEDROCK_INVOKE = frozenset({"invoke_model", "invoke_model_with_response_stream"})

Path = tuple[str, ...]

_MAX_TOKENS: Path = ("max_tokens",)
_FAMILY_LIMITS: dict[str, tuple[Path, ...]] = {
    "anthropic": (_MAX_TOKENS, ("max_tokens_to_sample",)),
    "meta": (("max_gen_len",),),
    "mistral": (_MAX_TOKENS,),
    "cohere": (_MAX_TOKENS,),
    "ai21": (_MAX_TOKENS, ("maxTokens",)),
    "titan": (("textGenerationConfig", "maxTokenCount"),),
    "nova": (("inferenceConfig", "maxTokens"), ("inferenceConfig", "max_new_tokens")),
    "deepseek": (_MAX_TOKENS,),
    "openai": (_MAX_TOKENS, ("max_completion_tokens",)),
    "qwen": (_MAX_TOKENS,),
    "writer": (_MAX_TOKENS,),
}
ANY_FAMILY_LIMITS: tuple[Path, ...] = tuple(dict.fromkeys(p for ps in _FAMILY_LIMITS.values() for p in ps))
# Keys that bound output wherever a dict of model parameters is passed through
# (LangChain model_kwargs, OpenAI extra_body).
MODEL_KWARGS_LIMITS: tuple[Path, ...] = ANY_FAMILY_LIMITS

_REGION_PREFIXES = frozenset({"us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"})
_NOT_GENERATIVE = ("embed", "rerank", "image", "canvas", "reel", "stability.", "sonic")


def bedrock_family(model_id: str) -> str | None:
    """The model family a Bedrock model id belongs to; '' when not a text generator.

    None means the id is not recognised, so any family's limit key is accepted.
    """
    mid = model_id.lower()
    if mid.startswith("arn:"):
        mid = mid.rsplit("/", 1)[-1]
    if any(marker in mid for marker in _NOT_GENERATIVE):
        return ""
    head, _, rest = mid.partition(".")
    if head in _REGION_PREFIXES and rest:
        head, _, rest = rest.partition(".")
    if head == "amazon":
        if rest.startswith("titan"):
            return "titan"
        if rest.startswith("nova"):
            return "nova"
        return None
    return head if head in _FAMILY_LIMITS else None


def bedrock_limit_paths(family: str | None) -> tuple[Path, ...]:
    if family is None:
        return ANY_FAMILY_LIMITS
    return _FAMILY_LIMITS[family]


def is_langchain_model(qualname: str) -> bool:
    """A LangChain chat model class, or `init_chat_model`, which builds one from the same arguments."""
    module, _, cls = qualname.rpartition(".")
    package = module.split(".", 1)[0]
    return (cls in LANGCHAIN_MODELS or cls == "init_chat_model") and package in LANGCHAIN_PACKAGES


def client_kind_of_class(qualname: str) -> str | None:
    """The client kind an instance of the class named `qualname` is, if any."""
    module, _, cls = qualname.rpartition(".")
    root = module.split(".", 1)[0]
    if cls in OPENAI_CLIENTS and root == "openai":
        return OPENAI
    if cls in ANTHROPIC_CLIENTS and root == "anthropic":
        return ANTHROPIC
    if cls in BEDROCK_CLIENT_TYPES:
        return BEDROCK
    if cls == "Router" and root == "litellm":
        return LITELLM_ROUTER
    if is_langchain_model(qualname) or (cls in LANGCHAIN_BASES and root in LANGCHAIN_PACKAGES):
        return LANGCHAIN
    return None
