import time

import requests
from anthropic import Anthropic

client = Anthropic()


def chat_session(read_input) -> None:
    history: list[dict] = []
    while len(history) < 40:
        history.append({"role": "user", "content": read_input()})
        r = client.messages.create(model="claude-haiku-4-5", max_tokens=500, messages=history)
        history.append({"role": "assistant", "content": r.content[0].text})


def wait_then_summarize(job_url: str) -> str:
    while True:
        status = requests.get(job_url, timeout=10).json()["status"]
        if status == "done":
            break
        time.sleep(5)
    r = client.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=[{"role": "user", "content": status}])
    return r.content[0].text
