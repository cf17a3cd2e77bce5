"""Virtual keys and SigV4 verification, without a server."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokenfuse.config import parse_config
from tokenfuse.gateway.identity import AuthError, KeyRing

DIGEST = hashlib.sha256(b"digest-only-key").hexdigest()
RING = KeyRing(
    parse_config(
        f"""
keys:
  - {{name: a, key: plain-key, principal: p, workflow: w, aws_access_key_id: AKIAEXAMPLE000000001,
     aws_secret_access_key: s3cr3t}}
  - {{name: b, key_sha256: {DIGEST}, principal: q}}
"""
    )
)
URL = "https://gw.example:8787/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
BODY = b'{"messages": []}'


def signed(secret: str = "s3cr3t", body: bytes = BODY, when: float | None = None, akid: str = "AKIAEXAMPLE000000001") -> dict[str, str]:
    req = AWSRequest(method="POST", url=URL, data=body, headers={"content-type": "application/json"})
    auth = SigV4Auth(Credentials(akid, secret), "bedrock", "us-east-1")
    if when is None:
        auth.add_auth(req)
    else:
        # Sign as if at `when`: botocore stamps the current time, so patch its clock.
        import botocore.auth as ba

        real = ba.datetime.datetime

        class Fixed(real):  # type: ignore[misc, valid-type]
            @classmethod
            def utcnow(cls) -> datetime:  # type: ignore[override]
                return datetime.fromtimestamp(when, UTC).replace(tzinfo=None)

            @classmethod
            def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
                return datetime.fromtimestamp(when, UTC)

        ba.datetime.datetime = Fixed  # type: ignore[misc]
        try:
            auth.add_auth(req)
        finally:
            ba.datetime.datetime = real  # type: ignore[misc]
    headers = {k.lower(): v for k, v in req.headers.items()}
    headers["host"] = "gw.example:8787"
    return headers


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ({"authorization": "Bearer plain-key"}, "a"),
        ({"x-api-key": "plain-key"}, "a"),
        ({"api-key": "digest-only-key"}, "b"),
        ({"authorization": "bearer   digest-only-key  "}, "b"),
    ],
)
def test_key_headers(headers: dict[str, str], name: str) -> None:
    assert RING.authenticate(headers, "POST", URL, BODY).name == name


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "no API key"),
        ({"authorization": "Bearer nope"}, "not a tokenfuse key"),
        ({"authorization": "Basic Zm9vOmJhcg=="}, "must be `Bearer"),
        ({"x-api-key": "nope"}, "not a tokenfuse key"),
    ],
)
def test_unknown_or_missing_keys(headers: dict[str, str], fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment):
        RING.authenticate(headers, "POST", URL, BODY)


def test_sigv4_verified_with_botocore() -> None:
    assert RING.authenticate(signed(), "POST", lambda: URL, BODY).name == "a"


@pytest.mark.parametrize(
    ("headers", "body", "fragment"),
    [
        (signed(secret="wrong"), BODY, "does not match; check the secret"),
        (signed(), b'{"messages": [1]}', "does not match"),  # the payload hash is signed
        (signed(akid="AKIAUNKNOWN000000000"), BODY, "not configured"),
        (signed(when=time.time() - 3600), BODY, "15 minutes"),
    ],
)
def test_sigv4_rejections(headers: dict[str, str], body: bytes, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment):
        RING.authenticate(headers, "POST", URL, body)


def test_sigv4_tampered_signed_header() -> None:
    headers = signed()
    headers["content-type"] = "text/plain"
    with pytest.raises(AuthError, match="does not match"):
        RING.authenticate(headers, "POST", URL, BODY)
