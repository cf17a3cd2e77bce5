import os

from openai import AzureOpenAI as Azure

llm = Azure(
    api_version="2024-06-01",
    azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
)
DEPLOYMENT = os.environ.get("AZURE_DEPLOYMENT", "gpt-4o")


def extract_entities(document: str) -> str:
    out = llm.chat.completions.create(  # expect: TF001
        model=DEPLOYMENT,
        messages=[{"role": "user", "content": document}],
        response_format={"type": "json_object"},
    )
    return out.choices[0].message.content
