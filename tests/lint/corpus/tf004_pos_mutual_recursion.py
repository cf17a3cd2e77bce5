from openai import OpenAI

client = OpenAI()


def plan(goal: str) -> list[str]:  # expect: TF004
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": goal}], max_tokens=300)
    steps = r.choices[0].message.content.splitlines()
    return [s for step in steps for s in execute(step)]


def execute(step: str) -> list[str]:
    if step.startswith("SUBGOAL:"):
        return plan(step.removeprefix("SUBGOAL:"))
    return [step]
