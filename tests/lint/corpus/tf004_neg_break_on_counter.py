from openai import OpenAI

client = OpenAI()
MAX_ITERATIONS = 15


def solve(problem: str) -> str:
    messages = [{"role": "user", "content": problem}]
    iterations = 0
    while True:
        iterations += 1
        if iterations > MAX_ITERATIONS:
            raise TimeoutError("gave up after 15 iterations")
        out = client.chat.completions.create(model="o4-mini", messages=messages, max_completion_tokens=2000)
        text = out.choices[0].message.content
        if "FINAL:" in text:
            return text.split("FINAL:", 1)[1]
        messages.append({"role": "assistant", "content": text})
