"""A Stripe-like billing client: `.completions` and `.responses` here are not LLM APIs."""
from billing import Client

api = Client(key="sk_test")


def charge(customer: str) -> None:
    api.completions.create(customer=customer, amount=100)
    api.responses.create(customer=customer, status="ok")
