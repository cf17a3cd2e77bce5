from openai import OpenAI

from .budget import TokenBudget

client = OpenAI()


def chat_forever(budget: TokenBudget, next_message) -> None:
    history: list[dict] = []
    while True:
        budget.check_budget()
        history.append({"role": "user", "content": next_message()})
        r = client.chat.completions.create(model="gpt-4o", messages=history, max_completion_tokens=500)
        budget.charge(r.usage.total_tokens)
        history.append({"role": "assistant", "content": r.choices[0].message.content})
