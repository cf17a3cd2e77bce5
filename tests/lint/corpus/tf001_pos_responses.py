from openai import OpenAI

client = OpenAI()


def draft_email(brief: str) -> str:
    response = client.responses.create(  # expect: TF001
        model="gpt-4.1",
        instructions="Write a polite email.",
        input=brief,
    )
    return response.output_text


def stream_story(topic: str) -> None:
    with client.responses.stream(model="gpt-4.1-mini", input=f"A story about {topic}") as stream:  # expect: TF001
        for event in stream:
            if event.type == "response.output_text.delta":
                print(event.delta, end="")
