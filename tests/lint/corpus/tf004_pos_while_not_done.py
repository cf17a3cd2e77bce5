import json

from openai import OpenAI

client = OpenAI()


def research(question: str, search) -> str:
    history = [{"role": "user", "content": question}]
    done = False
    answer = ""
    while not done:  # expect: TF004
        reply = client.chat.completions.create(model="gpt-4o", messages=history, max_completion_tokens=1000)
        msg = reply.choices[0].message
        history.append(msg)
        if msg.tool_calls:
            for call in msg.tool_calls:
                args = json.loads(call.function.arguments)
                history.append({"role": "tool", "tool_call_id": call.id, "content": search(**args)})
        else:
            answer = msg.content
            done = True
    return answer
