from typing import Any

from openai import OpenAI

_client = OpenAI()


def chat(messages: list[dict[str, str]], **options: Any) -> str:
    resp = _client.chat.completions.create(model="gpt-4o", messages=messages, **options)
    return resp.choices[0].message.content


def title_for(article: str) -> str:
    return chat([{"role": "user", "content": f"Title for: {article}"}], temperature=0.7)  # expect: TF001


def short_title_for(article: str) -> str:
    return chat([{"role": "user", "content": f"Five-word title: {article}"}], max_tokens=20)
