import time

import openai
from openai import OpenAI

client = OpenAI()


def complete_with_retry(messages: list[dict]) -> str:
    while True:  # expect: TF004
        try:
            r = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=400)
            return r.choices[0].message.content
        except openai.RateLimitError:
            time.sleep(2)
