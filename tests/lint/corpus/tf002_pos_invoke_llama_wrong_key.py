import json

import boto3

brt = boto3.client("bedrock-runtime", region_name="us-west-2")
LLAMA = "meta.llama3-1-70b-instruct-v1:0"


def llama(prompt: str) -> str:
    native_request = {"prompt": prompt, "max_tokens": 512, "temperature": 0.5}
    response = brt.invoke_model(modelId=LLAMA, body=json.dumps(native_request))  # expect: TF002
    return json.loads(response["body"].read())["generation"]
