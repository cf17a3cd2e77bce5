import queue

from openai import OpenAI

client = OpenAI()


def consume(q: "queue.Queue[str]", handle) -> None:
    while True:
        item = q.get()
        if item is None:
            break
        handle(item)


def summarize(text: str) -> str:
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}], max_tokens=200)
    return r.choices[0].message.content
