"""Code that mentions the SDKs without calling a model."""
from openai import OpenAI
from openai.types.chat import ChatCompletion


def fake_completion(text: str) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o", "choices": []}
    )


def list_models() -> list[str]:
    return [m.id for m in OpenAI().models.list()]
