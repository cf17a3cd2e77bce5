"""Nested helper functions, the way notebooks-turned-modules often look."""
import boto3
from openai import OpenAI


def make_pipeline(region: str):
    oai = OpenAI()
    brt = boto3.client("bedrock-runtime", region_name=region)

    def first_pass(text: str) -> str:
        r = oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])  # expect: TF001
        return r.choices[0].message.content

    def second_pass(text: str) -> str:
        r = brt.converse(modelId="us.meta.llama3-3-70b-instruct-v1:0", messages=[{"role": "user", "content": [{"text": text}]}])  # expect: TF002
        return r["output"]["message"]["content"][0]["text"]

    def pipeline(text: str) -> str:
        return second_pass(first_pass(text))

    return pipeline
