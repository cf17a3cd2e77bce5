import json

import boto3

client = boto3.client("bedrock-runtime")


def claude(prompt: str) -> str:
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.5,
        }
    )
    resp = client.invoke_model(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=body)  # expect: TF002
    return json.loads(resp["body"].read())["content"][0]["text"]
