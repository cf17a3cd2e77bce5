from openai import OpenAI

client = OpenAI(max_retries=0)


def robust_answer(question: str) -> str:
    resp = client.with_options(max_retries=5, timeout=30.0).chat.completions.create(  # expect: TF001
        model="gpt-4o",
        messages=[{"role": "user", "content": question}],
    )
    return resp.choices[0].message.content
