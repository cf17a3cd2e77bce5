from openai import OpenAI

client = OpenAI()
MAX_DEPTH = 3


def expand(topic: str, depth: int = 0) -> dict:
    if depth >= MAX_DEPTH:
        return {"topic": topic, "children": []}
    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"List 3 subtopics of {topic}"}],
        max_tokens=200,
    )
    subtopics = resp.choices[0].message.content.splitlines()
    return {"topic": topic, "children": [expand(s, depth + 1) for s in subtopics]}
