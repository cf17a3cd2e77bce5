import json

import boto3

brt = boto3.client("bedrock-runtime")


def llama(prompt: str) -> str:
    body = {"prompt": prompt, "max_gen_len": 512, "temperature": 0.2}
    r = brt.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=json.dumps(body))
    return json.loads(r["body"].read())["generation"]


def titan(prompt: str) -> str:
    config = {"maxTokenCount": 400, "temperature": 0}
    r = brt.invoke_model(
        modelId="amazon.titan-text-premier-v1:0",
        body=json.dumps({"inputText": prompt, "textGenerationConfig": config}),
    )
    return json.loads(r["body"].read())["results"][0]["outputText"]
