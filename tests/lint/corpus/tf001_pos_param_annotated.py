from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai import AsyncOpenAI


async def classify(client: AsyncOpenAI, text: str, labels: list[str]) -> str:
    prompt = f"Pick one of {labels} for: {text}"
    result = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])  # expect: TF001
    return result.choices[0].message.content.strip()
