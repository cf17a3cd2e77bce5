import boto3

brt = boto3.client("bedrock-runtime")


def invoke_raw(model_id: str, body: bytes) -> bytes:
    """Body is built by the caller from a versioned template; limits live there."""
    return brt.invoke_model(modelId=model_id, body=body)["body"].read()
