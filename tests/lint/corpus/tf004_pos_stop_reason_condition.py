import boto3

bedrock = boto3.client("bedrock-runtime")


def converse_with_tools(messages: list, tool_config: dict, run_tool) -> list:
    response = bedrock.converse(
        modelId="anthropic.claude-3-5-sonnet-20240620-v1:0",
        messages=messages,
        toolConfig=tool_config,
        inferenceConfig={"maxTokens": 1024},
    )
    while response["stopReason"] == "tool_use":  # expect: TF004
        messages.append(response["output"]["message"])
        messages.append(run_tool(response["output"]["message"]))
        response = bedrock.converse(
            modelId="anthropic.claude-3-5-sonnet-20240620-v1:0",
            messages=messages,
            toolConfig=tool_config,
            inferenceConfig={"maxTokens": 1024},
        )
    return messages
