from typing import Any

from langchain_openai import ChatOpenAI


def build_llm(settings: dict[str, Any]) -> ChatOpenAI:
    # settings come from a validated YAML file that requires max_tokens.
    return ChatOpenAI(**settings)
