import itertools

import litellm


def refine(draft: str, critic) -> str:
    for attempt in itertools.count():  # expect: TF004
        resp = litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Improve (attempt {attempt}):\n{draft}"}],
            max_tokens=800,
        )
        draft = resp.choices[0].message.content
        if critic(draft):
            return draft
    return draft
