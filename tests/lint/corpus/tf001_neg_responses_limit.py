from dataclasses import dataclass

from openai import OpenAI


@dataclass
class Settings:
    model: str = "gpt-4.1"
    max_output_tokens: int = 1024


SETTINGS = Settings()
client = OpenAI()


def draft(brief: str) -> str:
    r = client.responses.create(model=SETTINGS.model, input=brief, max_output_tokens=SETTINGS.max_output_tokens)
    return r.output_text
