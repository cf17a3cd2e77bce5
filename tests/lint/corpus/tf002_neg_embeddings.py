import json

import boto3

runtime = boto3.client("bedrock-runtime")


def embed(text: str) -> list[float]:
    resp = runtime.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": text}))
    return json.loads(resp["body"].read())["embedding"]
