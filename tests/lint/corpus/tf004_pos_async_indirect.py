from openai import AsyncOpenAI


class Agent:
    def __init__(self) -> None:
        self.client = AsyncOpenAI()
        self.messages: list[dict] = []

    async def _step(self) -> bool:
        resp = await self.client.chat.completions.create(
            model="gpt-4o-mini", messages=self.messages, max_tokens=500
        )
        self.messages.append(resp.choices[0].message)
        return resp.choices[0].finish_reason == "stop"

    async def run(self, goal: str) -> None:
        self.messages.append({"role": "user", "content": goal})
        while True:  # expect: TF004
            finished = await self._step()
            if finished:
                return
