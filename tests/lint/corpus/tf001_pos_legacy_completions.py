import openai

client = openai.OpenAI()


def autocomplete(prefix: str) -> str:
    out = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prefix, temperature=0.3)  # expect: TF001
    return out.choices[0].text
