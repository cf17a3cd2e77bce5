import json

import boto3


class TitanWriter:
    def __init__(self, region: str) -> None:
        self.session = boto3.Session(region_name=region)
        self.runtime = self.session.client("bedrock-runtime")

    def write(self, prompt: str):
        payload = {"inputText": prompt, "textGenerationConfig": {"temperature": 0.7, "topP": 0.9}}
        response = self.runtime.invoke_model_with_response_stream(  # expect: TF002
            modelId="amazon.titan-text-express-v1",
            body=json.dumps(payload),
        )
        for event in response["body"]:
            yield json.loads(event["chunk"]["bytes"])["outputText"]
