"""The lint rules: their codes, one-line summaries, and the finding record."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_TOKENS_CEILING = 32_000


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    name: str
    summary: str
    fix: str


RULES: dict[str, Rule] = {
    r.code: r
    for r in (
        Rule(
            "TF001",
            "openai-call-without-max-tokens",
            "OpenAI / Azure OpenAI call without an output-token limit",
            "Pass max_completion_tokens (or max_tokens) to chat.completions, max_output_tokens to responses.",
        ),
        Rule(
            "TF002",
            "bedrock-call-without-max-tokens",
            "Bedrock runtime call without an output-token limit",
            'Pass inferenceConfig={"maxTokens": N} to converse, or the model family\'s limit key in the invoke_model body.',
        ),
        Rule(
            "TF003",
            "framework-call-without-max-tokens",
            "LiteLLM call or LangChain chat model without an output-token limit",
            "Pass max_tokens=N to litellm.completion / acompletion or to the chat model's constructor.",
        ),
        Rule(
            "TF004",
            "unbounded-agent-loop",
            "Loop or recursion that calls a model with no iteration counter or budget check",
            "Count iterations and break (or raise) when a max-steps or budget limit is reached.",
        ),
        Rule(
            "TF005",
            "max-tokens-above-ceiling",
            "Literal max-tokens value above the configured ceiling",
            "Lower the limit, or raise max-tokens-ceiling in [tool.tokenfuse.lint] if it is intended.",
        ),
    )
}

ALL_CODES: frozenset[str] = frozenset(RULES)


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    path: str
    line: int
    col: int  # 1-based character column, as other linters print it
    rule: str
    message: str
