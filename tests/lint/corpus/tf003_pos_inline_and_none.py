from langchain_community.chat_models import ChatOpenAI
from langchain_openai import AzureChatOpenAI


def one_shot(question: str) -> str:
    return ChatOpenAI(model_name="gpt-4", temperature=0).invoke(question).content  # expect: TF003


azure_llm = AzureChatOpenAI(azure_deployment="gpt-4o", api_version="2024-06-01", max_tokens=None)  # expect: TF003
