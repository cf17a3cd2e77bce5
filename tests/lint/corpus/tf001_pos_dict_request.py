from openai import OpenAI

client = OpenAI()


def build_request(question: str) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": question}]}


def ask(question: str) -> str:
    params = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
    }
    resp = client.chat.completions.create(**params)  # expect: TF001
    return resp.choices[0].message.content
