def converse_once(brt, model_id: str, text: str) -> str:
    """brt is a bedrock-runtime client injected by the caller."""
    out = brt.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": text}]}], system=[{"text": "Be brief."}])  # expect: TF002
    return out["output"]["message"]["content"][0]["text"]
