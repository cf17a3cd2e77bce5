import boto3

brt = boto3.client("bedrock-runtime")


def novel(prompt: str) -> str:
    r = brt.converse(
        modelId="anthropic.claude-3-7-sonnet-20250219-v1:0",
        messages=[{"role": "user", "content": [{"text": prompt}]}],
        inferenceConfig={"maxTokens": 64000, "temperature": 1.0},  # expect: TF005
    )
    return r["output"]["message"]["content"][0]["text"]
