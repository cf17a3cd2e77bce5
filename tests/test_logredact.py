"""Secrets are scrubbed from every log record, whoever logs it."""

from __future__ import annotations

import logging

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokenfuse import logredact
from tokenfuse.config import parse_config

CONFIG = parse_config(
    """
server: {admin_token: admin-token-0001}
upstreams:
  - {name: o, protocol: openai, base_url: "http://x/v1", api_key: sk-upstream-0001, headers: {x-org: org-secret-01}}
  - {name: b, protocol: bedrock, base_url: "http://x", region: us-east-1, aws_access_key_id: AKIAUP,
     aws_secret_access_key: upstream-aws-secret, aws_session_token: FwoSESSIONtoken0001}
keys:
  - {name: a, key: tf-key-0001, principal: p, aws_access_key_id: AKIAKEY, aws_secret_access_key: key-aws-secret}
"""
)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=host, Signature=" + "ab" * 32, "ab" * 32),
        ("{'Authorization': b'Bearer abcdef123', 'X-Amz-Security-Token': b'IQoJtoken'}", "IQoJtoken"),
        ("{'Authorization': b'Bearer abcdef123'}", "abcdef123"),
        ("host:gw\nx-amz-security-token:IQoJb3JpZ2luX2VjEXAMPLE\n\nhost;x-amz-security-token", "IQoJb3JpZ2lu"),
        ("Signature:\n" + "c" * 64, "c" * 64),
        ('{"x-api-key": "sk-ant-api-key-1"}', "sk-ant-api-key-1"),
        ("send: b'POST / HTTP/1.1\\r\\napi-key: azure-key-1\\r\\n'", "azure-key-1"),
        ("postgresql://tokenfuse:db-password@db:5432/ledger", "db-password"),
        ("GET /v1beta/models?key=goog-key-1&alt=sse", "goog-key-1"),
        ("Cookie: session=abcdef", "session=abcdef"),
    ],
)
def test_credential_positions_are_redacted(text: str, leak: str) -> None:
    clean = logredact.redact(text)
    assert leak not in clean and logredact.REDACTED in clean


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        "refused tf-1 alice-droid: budget team-month exhausted",
        "the Authorization header must be `Bearer <tokenfuse key>` or an AWS SigV4 signature",
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token",
    ):
        assert logredact.redact(text) == text


def test_configured_secrets_are_redacted_anywhere() -> None:
    logredact.install(CONFIG)
    secrets = logredact.config_secrets(CONFIG)
    assert secrets == {
        "admin-token-0001", "sk-upstream-0001", "org-secret-01", "upstream-aws-secret", "FwoSESSIONtoken0001",
        "tf-key-0001", "key-aws-secret",
    }
    for s in secrets:
        assert s not in logredact.redact(f"oops: {s}!")


def test_records_are_scrubbed_for_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    logredact.install(CONFIG)
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("some.library")
    log.debug("sending headers %s", {"authorization": "Bearer tf-key-0001"})
    try:
        raise ValueError("bad secret upstream-aws-secret")
    except ValueError:
        log.exception("failed with %s", "FwoSESSIONtoken0001")
    text = "\n".join(f"{r.getMessage()} {r.exc_text}" for r in caplog.records)
    assert "tf-key-0001" not in text and "upstream-aws-secret" not in text and "FwoSESSIONtoken0001" not in text
    assert caplog.text.count(logredact.REDACTED) >= 3


def test_positional_args_survive_when_scrubbing_them_suffices() -> None:
    logredact.install(CONFIG)
    # uvicorn's access formatter unpacks record.args: keep them a tuple.
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", "/v1/models?key=goog-key-1", "1.1", 200), None,
    )
    logredact.scrub(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert "goog-key-1" not in record.getMessage()


def test_botocore_debug_output_is_scrubbed_and_botocore_kept_at_info(caplog: pytest.LogCaptureFixture) -> None:
    debug = CONFIG.model_copy(update={"server": CONFIG.server.model_copy(update={"log_level": "debug"})})
    botocore_log = logging.getLogger("botocore")
    saved = botocore_log.level
    try:
        botocore_log.setLevel(logging.NOTSET)
        logredact.install(debug)
        assert botocore_log.level == logging.INFO
        botocore_log.setLevel(logging.DEBUG)
        caplog.set_level(logging.DEBUG)
        req = AWSRequest(method="POST", url="http://x/model/m/converse", data=b"{}")
        SigV4Auth(Credentials("AKIAUP", "unconfigured-secret", "IQoJunconfiguredTOKEN"), "bedrock", "us-east-1").add_auth(req)
        signature = req.headers["Authorization"].rsplit("=", 1)[1]
    finally:
        botocore_log.setLevel(saved)
    assert "CanonicalRequest" in caplog.text
    assert "IQoJunconfiguredTOKEN" not in caplog.text and signature not in caplog.text
