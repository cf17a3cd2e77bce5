"""A BabyAGI-style task list: the model adds tasks as fast as it completes them."""
from collections import deque

import litellm


def run(objective: str) -> list[str]:
    tasks = deque([f"Make a plan for: {objective}"])
    results: list[str] = []
    while tasks:  # expect: TF004
        task = tasks.popleft()
        r = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": task}], max_tokens=500)
        text = r.choices[0].message.content
        results.append(text)
        tasks.extend(line for line in text.splitlines() if line.startswith("TODO"))
    return results
