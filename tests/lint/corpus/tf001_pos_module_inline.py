import openai


def one_off(prompt: str) -> str:
    r = openai.OpenAI().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])  # expect: TF001
    return r.choices[0].message.content


def module_client(prompt: str) -> str:
    r = openai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])  # expect: TF001
    return r.choices[0].message.content
