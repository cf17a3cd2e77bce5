from openai import OpenAI

client = OpenAI()
MAX_TOKENS = None  # "let the model decide"


def explain(code: str) -> str:
    resp = client.chat.completions.create(  # expect: TF001
        model="o4-mini",
        messages=[{"role": "user", "content": f"Explain:\n{code}"}],
        max_completion_tokens=MAX_TOKENS,
    )
    return resp.choices[0].message.content
