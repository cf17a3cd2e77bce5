from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage


class Reflector:
    def __init__(self, llm: BaseChatModel) -> None:
        self.llm = llm

    def improve(self, draft: str) -> str:
        while "APPROVED" not in draft:  # expect: TF004
            critique = self.llm.invoke([HumanMessage(f"Critique: {draft}")]).content
            draft = self.llm.invoke([HumanMessage(f"Rewrite using: {critique}")]).content
        return draft
