import litellm
from litellm import acompletion as llm_call


def sync_answer(question: str) -> str:
    resp = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])  # expect: TF003
    return resp.choices[0].message.content


async def async_answer(question: str) -> str:
    resp = await llm_call(  # expect: TF003
        model="anthropic/claude-3-5-sonnet-20240620",
        messages=[{"role": "user", "content": question}],
        temperature=0.1,
    )
    return resp.choices[0].message.content
