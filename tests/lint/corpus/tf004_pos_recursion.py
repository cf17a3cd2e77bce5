from openai import OpenAI

client = OpenAI()


def decompose(task: str) -> list[str]:  # expect: TF004
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"Split into subtasks or say ATOMIC: {task}"}],
        max_tokens=400,
    )
    text = resp.choices[0].message.content
    if text.strip() == "ATOMIC":
        return [task]
    steps: list[str] = []
    for sub in text.splitlines():
        steps.extend(decompose(sub))
    return steps
