import json

import boto3

bedrock_runtime = boto3.client("bedrock-runtime")


def claude(prompt: str, max_tokens: int = 1024) -> str:
    request = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    }
    resp = bedrock_runtime.invoke_model(
        modelId="us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        body=json.dumps(request).encode("utf-8"),
        contentType="application/json",
    )
    return json.loads(resp["body"].read())["content"][0]["text"]
