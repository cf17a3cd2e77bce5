from dataclasses import dataclass, field

from openai import AsyncOpenAI, OpenAI


class Classifier:
    client = OpenAI()

    def label(self, text: str) -> str:
        r = self.client.responses.create(model="gpt-4.1-mini", input=f"Label: {text}")  # expect: TF001
        return r.output_text


@dataclass
class Writer:
    client: AsyncOpenAI = field(default_factory=AsyncOpenAI)

    async def write(self, brief: str) -> str:
        r = await self.client.responses.create(model="gpt-4.1", input=brief)  # expect: TF001
        return r.output_text


fast_client = OpenAI()
quick = lambda text: fast_client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])  # expect: TF001  # noqa: E731
