"""A chat bot whose own method happens to be called converse."""
import boto3


class Bot:
    def converse(self, text: str) -> str:
        return text[::-1]


s3 = boto3.client("s3")


def handle(bot: Bot, text: str) -> str:
    s3.put_object(Bucket="logs", Key="last", Body=text.encode())
    return bot.converse(text)


def invoke(payload: bytes) -> None:
    lambda_client = boto3.client("lambda")
    lambda_client.invoke_model(FunctionName="scorer", Payload=payload)
