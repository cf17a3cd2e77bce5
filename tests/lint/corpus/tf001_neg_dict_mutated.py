from openai import OpenAI

client = OpenAI()


def ask(question: str, short: bool) -> str:
    params = {"model": "gpt-4o", "messages": [{"role": "user", "content": question}]}
    params["max_completion_tokens"] = 100 if short else 1000
    resp = client.chat.completions.create(**params)
    return resp.choices[0].message.content
