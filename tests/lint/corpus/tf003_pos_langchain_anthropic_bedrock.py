from langchain_anthropic import ChatAnthropic
from langchain_aws import ChatBedrock, ChatBedrockConverse


def make_models(region: str):
    claude = ChatAnthropic(model="claude-3-5-sonnet-latest", temperature=0.3)  # expect: TF003
    bedrock = ChatBedrock(  # expect: TF003
        model_id="anthropic.claude-3-haiku-20240307-v1:0",
        region_name=region,
        model_kwargs={"temperature": 0.1},
    )
    converse = ChatBedrockConverse(model="us.amazon.nova-pro-v1:0", region_name=region)  # expect: TF003
    return claude, bedrock, converse
