import litellm

PRICE_PER_TOKEN = 0.000002


def brainstorm(topic: str, budget_usd: float) -> list[str]:
    ideas: list[str] = []
    spent_usd = 0.0
    while True:
        r = litellm.completion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"One idea about {topic}"}], max_tokens=100
        )
        ideas.append(r.choices[0].message.content)
        spent_usd += r.usage.total_tokens * PRICE_PER_TOKEN
        if spent_usd >= budget_usd:
            break
    return ideas
