import os

from openai import OpenAI

client = OpenAI()
LIMIT = int(os.environ.get("LLM_MAX_TOKENS", "1024"))


def answer(q: str) -> str:
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": q}], max_tokens=LIMIT)
    return r.choices[0].message.content
