import json

import boto3

bedrock = boto3.session.Session().client(service_name="bedrock-runtime", region_name="eu-central-1")


def claude_v2(prompt: str) -> str:
    resp = bedrock.invoke_model(  # expect: TF002
        body=json.dumps({"prompt": f"\n\nHuman: {prompt}\n\nAssistant:", "temperature": 0.5}),
        modelId="anthropic.claude-v2:1",
        accept="application/json",
        contentType="application/json",
    )
    return json.loads(resp["body"].read())["completion"]
