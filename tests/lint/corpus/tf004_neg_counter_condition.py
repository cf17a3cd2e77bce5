import anthropic

client = anthropic.AsyncAnthropic()


async def loop(task: str, max_turns: int = 10) -> str:
    messages = [{"role": "user", "content": task}]
    turns = 0
    reply = None
    while turns < max_turns:
        turns += 1
        reply = await client.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=messages)
        if reply.stop_reason == "end_turn":
            break
        messages.append({"role": "assistant", "content": reply.content})
    return reply.content[0].text if reply else ""
