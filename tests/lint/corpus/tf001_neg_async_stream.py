from openai import AsyncOpenAI

client = AsyncOpenAI()


async def stream_answer(question: str) -> str:
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": question}],
        max_tokens=800,
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)
