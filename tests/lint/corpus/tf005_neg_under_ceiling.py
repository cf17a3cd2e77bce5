import anthropic
from openai import OpenAI

oai = OpenAI()
claude = anthropic.Anthropic()


def reason(problem: str) -> str:
    r = oai.chat.completions.create(
        model="o3", messages=[{"role": "user", "content": problem}], max_completion_tokens=32_000
    )
    return r.choices[0].message.content


def summarize(text: str) -> str:
    m = claude.messages.create(model="claude-haiku-4-5", max_tokens=4096, messages=[{"role": "user", "content": text}])
    return m.content[0].text
