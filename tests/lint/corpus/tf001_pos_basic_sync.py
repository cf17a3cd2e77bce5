"""Summarise support tickets with the OpenAI SDK."""
from openai import OpenAI

client = OpenAI()


def summarize(ticket: str) -> str:
    resp = client.chat.completions.create(  # expect: TF001
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Summarise the ticket in two sentences."},
            {"role": "user", "content": ticket},
        ],
        temperature=0.2,
    )
    return resp.choices[0].message.content or ""
