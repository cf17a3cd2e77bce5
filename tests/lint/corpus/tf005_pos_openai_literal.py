from openai import OpenAI

client = OpenAI()


def long_report(data: str) -> str:
    r = client.chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": data}],
        max_tokens=100_000,  # expect: TF005
    )
    return r.choices[0].message.content
