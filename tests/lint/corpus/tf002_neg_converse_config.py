import boto3

client = boto3.client("bedrock-runtime")
INFERENCE = {"maxTokens": 512, "temperature": 0.5}


def ask(question: str) -> str:
    r = client.converse(
        modelId="anthropic.claude-3-5-haiku-20241022-v1:0",
        messages=[{"role": "user", "content": [{"text": question}]}],
        inferenceConfig=INFERENCE,
    )
    return r["output"]["message"]["content"][0]["text"]
