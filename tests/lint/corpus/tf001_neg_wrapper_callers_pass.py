from typing import Any

from openai import OpenAI

client = OpenAI()


def chat(prompt: str, **opts: Any) -> str:
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}], **opts)
    return r.choices[0].message.content


def headline(text: str) -> str:
    return chat(f"Headline for {text}", max_completion_tokens=30)


def abstract(text: str) -> str:
    return chat(f"Abstract for {text}", max_tokens=400, temperature=0.1)
