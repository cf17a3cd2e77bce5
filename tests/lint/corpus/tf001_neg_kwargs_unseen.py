from typing import Any

from openai import OpenAI

client = OpenAI()


def complete(**request: Any) -> Any:
    """Thin pass-through used by other modules; callers set the limits."""
    return client.chat.completions.create(**request)
