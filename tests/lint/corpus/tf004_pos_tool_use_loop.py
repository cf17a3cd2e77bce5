import anthropic

client = anthropic.Anthropic()


def run_agent(task: str, tools: list[dict], execute) -> str:
    messages = [{"role": "user", "content": task}]
    while True:  # expect: TF004
        response = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=2048, tools=tools, messages=messages
        )
        messages.append({"role": "assistant", "content": response.content})
        if response.stop_reason != "tool_use":
            break
        results = [execute(block) for block in response.content if block.type == "tool_use"]
        messages.append({"role": "user", "content": results})
    return response.content[0].text
