from anthropic import AsyncAnthropic

client = AsyncAnthropic()


async def essay(topic: str) -> str:
    msg = await client.messages.create(
        model="claude-opus-4-1",
        max_tokens=64000,  # expect: TF005
        messages=[{"role": "user", "content": f"Write an essay on {topic}"}],
    )
    return msg.content[0].text
