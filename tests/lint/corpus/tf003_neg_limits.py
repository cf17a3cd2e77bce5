import litellm
from langchain_anthropic import ChatAnthropic
from langchain_aws import ChatBedrock, ChatBedrockConverse
from langchain_openai import ChatOpenAI as OpenAIChat

gpt = OpenAIChat(model="gpt-4o", max_tokens=1024)
claude = ChatAnthropic(model="claude-3-5-haiku-latest", max_tokens=512)
llama = ChatBedrock(model_id="meta.llama3-70b-instruct-v1:0", model_kwargs={"max_gen_len": 512})
nova = ChatBedrockConverse(model="us.amazon.nova-lite-v1:0", max_tokens=700)


def ask(q: str) -> str:
    r = litellm.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": q}], max_tokens=256)
    return r.choices[0].message.content
