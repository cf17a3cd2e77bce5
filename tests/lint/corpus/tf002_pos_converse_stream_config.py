import boto3

session = boto3.Session(profile_name="ml")
runtime = session.client("bedrock-runtime")


def stream(question: str):
    inference = {"temperature": 0.2, "topP": 0.9}
    resp = runtime.converse_stream(  # expect: TF002
        modelId="us.amazon.nova-pro-v1:0",
        messages=[{"role": "user", "content": [{"text": question}]}],
        inferenceConfig=inference,
    )
    for event in resp["stream"]:
        if "contentBlockDelta" in event:
            yield event["contentBlockDelta"]["delta"]["text"]
