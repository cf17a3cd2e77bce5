from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
model = ChatOpenAI(model="gpt-4o", temperature=0)  # expect: TF003
chain = prompt | model | StrOutputParser()


def run(question: str) -> str:
    return chain.invoke({"question": question})
