import asyncio

from openai import AsyncOpenAI


class Translator:
    def __init__(self, model: str = "gpt-4o") -> None:
        self.client = AsyncOpenAI()
        self.model = model

    async def translate(self, text: str, lang: str) -> str:
        completion = await self.client.chat.completions.create(  # expect: TF001
            model=self.model,
            messages=[{"role": "user", "content": f"Translate to {lang}: {text}"}],
        )
        return completion.choices[0].message.content

    async def translate_all(self, texts: list[str], lang: str) -> list[str]:
        return await asyncio.gather(*(self.translate(t, lang) for t in texts))
