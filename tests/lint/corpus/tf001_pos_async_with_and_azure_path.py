from openai import AsyncOpenAI
from openai.lib.azure import AzureOpenAI

azure = AzureOpenAI(api_version="2024-02-01", azure_endpoint="https://example.openai.azure.com")


async def once(prompt: str) -> str:
    async with AsyncOpenAI() as client:
        r = await client.responses.create(model="gpt-4o", input=prompt)  # expect: TF001
        return r.output_text


def legacy(prompt: str) -> str:
    return azure.completions.create(model="davinci-002", prompt=prompt).choices[0].text  # expect: TF001
