import json

import boto3

client = boto3.client("bedrock-runtime")


def build_body(prompt: str) -> str:
    return json.dumps({"prompt": prompt, "max_gen_len": 256})


def ask(question: str) -> str:
    r = client.converse(
        modelId="mistral.mistral-large-2407-v1:0",
        messages=[{"role": "user", "content": [{"text": question}]}],
        inferenceConfig=dict(maxTokens=256, temperature=0),
    )
    return r["output"]["message"]["content"][0]["text"]


def llama(prompt: str) -> str:
    r = client.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=build_body(prompt))
    return json.loads(r["body"].read())["generation"]
