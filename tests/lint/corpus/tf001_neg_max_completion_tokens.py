from openai import OpenAI

client = OpenAI()


def summarize(ticket: str) -> str:
    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": ticket}],
        max_completion_tokens=300,
    )
    return resp.choices[0].message.content
