import litellm

router = litellm.Router(
    model_list=[
        {"model_name": "fast", "litellm_params": {"model": "gpt-4o-mini"}},
        {"model_name": "smart", "litellm_params": {"model": "claude-3-5-sonnet-20240620"}},
    ]
)


async def route(question: str) -> str:
    resp = await router.acompletion(model="smart", messages=[{"role": "user", "content": question}])  # expect: TF003
    return resp.choices[0].message.content
