import litellm
from openai import OpenAI

client = OpenAI()
MODELS = ["gpt-4o", "gpt-4o-mini"]
PARAMS = {"temperature": 0, "max_tokens": 256}


def compare(question: str) -> list[str]:
    replies = [
        client.chat.completions.create(model=m, messages=[{"role": "user", "content": question}], max_tokens=50)
        for m in MODELS
    ]
    return [r.choices[0].message.content for r in replies]


def via_litellm(question: str) -> str:
    r = litellm.completion(model="gpt-4o", messages=[{"role": "user", "content": question}], **PARAMS)
    return r.choices[0].message.content
