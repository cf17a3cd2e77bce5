"""Anthropic requires max_tokens; ORM managers named like SDK resources are not LLM calls."""
import anthropic
from myapp.models import Survey

claude = anthropic.Anthropic()


def answer(question: str) -> str:
    msg = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": question}],
    )
    return msg.content[0].text


def record(survey: Survey, text: str) -> None:
    survey.responses.create(text=text)
