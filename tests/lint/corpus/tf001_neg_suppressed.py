from openai import OpenAI

client = OpenAI()


def offline_batch_job(prompt: str) -> str:
    # Runs in the nightly batch with a hard per-job token cap enforced by the gateway.
    r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])  # tokenfuse: ignore[TF001]
    return r.choices[0].message.content
