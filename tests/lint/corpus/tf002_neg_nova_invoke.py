import json

import boto3

bedrock = boto3.client("bedrock-runtime", region_name="us-east-1")


def nova(question: str) -> str:
    request_body = {
        "messages": [{"role": "user", "content": [{"text": question}]}],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0.7},
    }
    response = bedrock.invoke_model(modelId="us.amazon.nova-lite-v1:0", body=json.dumps(request_body))
    return json.loads(response["body"].read())["output"]["message"]["content"][0]["text"]
