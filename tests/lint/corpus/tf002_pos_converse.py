import boto3

bedrock = boto3.client(service_name="bedrock-runtime", region_name="us-east-1")
MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def ask(question: str) -> str:
    response = bedrock.converse(  # expect: TF002
        modelId=MODEL_ID,
        messages=[{"role": "user", "content": [{"text": question}]}],
    )
    return response["output"]["message"]["content"][0]["text"]
