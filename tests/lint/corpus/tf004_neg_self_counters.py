from openai import AsyncOpenAI


class Agent:
    def __init__(self, max_steps: int = 12) -> None:
        self.client = AsyncOpenAI()
        self.max_steps = max_steps
        self.step_count = 0
        self.messages: list[dict] = []

    async def run(self) -> None:
        while self.step_count < self.max_steps:
            self.step_count += 1
            r = await self.client.chat.completions.create(
                model="gpt-4o", messages=self.messages, max_completion_tokens=700
            )
            if r.choices[0].finish_reason == "stop":
                return

    async def plan(self, goal: str, depth: int = 0) -> list[str]:
        if depth > 2:
            return [goal]
        r = await self.client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": goal}], max_completion_tokens=300
        )
        subgoals = r.choices[0].message.content.splitlines()
        return [g for s in subgoals for g in await self.plan(s, depth + 1)]
