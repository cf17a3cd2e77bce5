import time

import boto3

brt = boto3.client("bedrock-runtime")


def poll_until_confident(prompt: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    answer = ""
    while time.monotonic() < deadline:
        r = brt.converse(
            modelId="us.amazon.nova-micro-v1:0",
            messages=[{"role": "user", "content": [{"text": prompt}]}],
            inferenceConfig={"maxTokens": 300},
        )
        answer = r["output"]["message"]["content"][0]["text"]
        if "CONFIDENT" in answer:
            break
    return answer
