from langchain_anthropic import ChatAnthropic

MAX_OUTPUT = 128 * 1024

writer = ChatAnthropic(model="claude-sonnet-4-5", max_tokens=MAX_OUTPUT)  # expect: TF005
