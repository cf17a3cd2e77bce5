import json

import anthropic
import boto3

client = anthropic.Anthropic()
brt = boto3.client("bedrock-runtime")


def long_stream(prompt: str) -> None:
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64_000, messages=[{"role": "user", "content": prompt}]) as s:  # expect: TF005
        for text in s.text_stream:
            print(text, end="")


def long_invoke(prompt: str) -> str:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100000, "messages": [{"role": "user", "content": prompt}]}  # expect: TF005
    r = brt.invoke_model(modelId="anthropic.claude-3-7-sonnet-20250219-v1:0", body=json.dumps(body))
    return json.loads(r["body"].read())["content"][0]["text"]
