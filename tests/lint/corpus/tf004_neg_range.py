from openai import OpenAI

client = OpenAI()
MAX_STEPS = 8


def agent(goal: str) -> str:
    history = [{"role": "user", "content": goal}]
    for _step in range(MAX_STEPS):
        r = client.chat.completions.create(model="gpt-4o", messages=history, max_completion_tokens=600)
        msg = r.choices[0].message
        history.append(msg)
        if not msg.tool_calls:
            return msg.content
    raise RuntimeError("agent did not finish within MAX_STEPS")
