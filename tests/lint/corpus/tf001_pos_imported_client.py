"""The client lives in another module of the application."""
from app.clients import openai_client


def classify(ticket: str) -> str:
    result = openai_client.responses.create(model="gpt-4.1-mini", input=f"Classify: {ticket}")  # expect: TF001
    return result.output_text


def chat(ticket: str) -> str:
    result = openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": ticket}])  # expect: TF001
    return result.choices[0].message.content
