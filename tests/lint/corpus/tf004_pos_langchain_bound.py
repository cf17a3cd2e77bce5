from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

llm = ChatOpenAI(model="gpt-4o", max_tokens=1024)


def agent(question: str, tools: dict) -> str:
    llm_with_tools = llm.bind_tools(list(tools.values()))
    messages = [HumanMessage(question)]
    while True:  # expect: TF004
        ai = llm_with_tools.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            return ai.content
        for call in ai.tool_calls:
            messages.append(ToolMessage(tools[call["name"]].invoke(call["args"]), tool_call_id=call["id"]))
