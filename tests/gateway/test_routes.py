from __future__ import annotations

import json

import pytest

from tokenfuse.gateway import routes
from tokenfuse.protocols import bedrock


@pytest.mark.parametrize(
    ("path", "protocol", "route"),
    [
        ("/v1/chat/completions", "openai", "chat.completions"),
        ("/v1/responses/", "openai", "responses"),
        ("/v1/messages?beta=true", "anthropic", "messages"),
        ("/v1/messages/count_tokens", "anthropic", "count_tokens"),
        ("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream", "bedrock", "converse_stream"),
    ],
)
def test_known_paths(path: str, protocol: str, route: str) -> None:
    found = routes.match(path)
    assert found is not None
    assert (found.protocol, found.route) == (protocol, route)


@pytest.mark.parametrize("path", ["/v1/models", "/model//converse", "/model/x/explode", "/"])
def test_unknown_paths(path: str) -> None:
    assert routes.match(path) is None


def test_bedrock_model_id_is_decoded_exactly_once() -> None:
    # A literal '%' in the id arrives as %25; decoding twice would turn "%2541" into "A".
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a%41b"
    encoded = arn.replace("%", "%25").replace(":", "%3A").replace("/", "%2F")
    found = routes.match(f"/model/{encoded}/invoke")
    assert found is not None and found.bedrock_action == "invoke"
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": []}).encode()
    info = bedrock.parse_request(found.route, body, found.model_from_path)
    assert info.model == arn
