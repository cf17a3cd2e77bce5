"""Virtual keys and SigV4 verification, without a server."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfuse.config import KeyConfig, parse_config
from tokenfuse.gateway.identity import BAD_SIGNATURE, AuthError, KeyRing, ReplayCache

DIGEST = hashlib.sha256(b"digest-only-key").hexdigest()
AKID = "AKIAEXAMPLE000000001"
KEYS = f"""
keys:
  - {{name: a, key: plain-key, principal: p, workflow: w, aws_access_key_id: {AKID},
     aws_secret_access_key: s3cr3t}}
  - {{name: b, key_sha256: {DIGEST}, principal: q}}
  - {{name: eu, principal: r, aws_access_key_id: AKIAEUROPE0000000001, aws_secret_access_key: eu-secret,
     aws_region: eu-west-1}}
"""


def ring(extra: str = "") -> KeyRing:
    return KeyRing(parse_config(KEYS + extra))


RING = ring("sigv4: {replay_cache_size: 0}")
URL = "https://gw.example:8787/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
BODY = b'{"messages": []}'


def signed(
    secret: str = "s3cr3t",
    body: bytes = BODY,
    when: float | None = None,
    akid: str = AKID,
    service: str = "bedrock",
    region: str = "us-east-1",
    url: str = URL,
    headers: dict[str, str] | None = None,
    unsigned_payload: bool = False,
) -> dict[str, str]:
    req = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json", **(headers or {})})
    if unsigned_payload:
        req.context["payload_signing_enabled"] = False
    auth = SigV4Auth(Credentials(akid, secret), service, region)
    at = datetime.fromtimestamp(time.time() if when is None else when, UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at):
        auth.add_auth(req)
    out = {k.lower(): v for k, v in req.headers.items()}
    out["host"] = url.split("/")[2]
    return out


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
        ({"x-api-key": "\udcff surrogate"}, "not a tokenfuse key"),
    ],
)
def test_unknown_or_missing_keys(headers: dict[str, str], fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment):
        RING.authenticate(headers, "POST", URL, BODY)


def test_sigv4_verified_with_botocore() -> None:
    ident = RING.identify(signed(), "POST", lambda: URL, BODY)
    assert ident.name == "a" and ident.region == "us-east-1"
    assert ident.signed_headers is not None and "host" in ident.signed_headers


def test_unknown_key_id_and_wrong_secret_get_the_same_answer() -> None:
    answers = []
    for headers in (signed(secret="wrong"), signed(akid="AKIAUNKNOWN000000000")):
        with pytest.raises(AuthError) as err:
            RING.authenticate(headers, "POST", URL, BODY)
        answers.append(err.value.message)
    assert answers == [BAD_SIGNATURE, BAD_SIGNATURE]


@pytest.mark.parametrize(
    ("headers", "body", "fragment"),
    [
        (signed(), b'{"messages": [1]}', "does not match"),  # the payload hash is signed
        (signed(when=time.time() - 3600), BODY, "15 minutes"),
        (signed(when=time.time() + 3600), BODY, "15 minutes"),
        (signed(service="s3"), BODY, "service 's3'"),
        (signed(service="bedrock-runtime"), BODY, "service 'bedrock-runtime'"),
        (signed(headers={"x-amz-content-sha256": "0" * 64}), BODY, "does not match the signed x-amz-content"),
        (signed(unsigned_payload=True), BODY, "UNSIGNED-PAYLOAD is refused"),
        ({**signed(), "host": "["}, BODY, "malformed"),
        ({**signed(), "host": "gw.example/evil"}, BODY, "malformed"),
        ({**signed(), "x-amz-date": "yesterday"}, BODY, "X-Amz-Date"),
        ({**signed(), "authorization": "AWS4-HMAC-SHA256 Credential=x"}, BODY, "malformed"),
    ],
)
def test_sigv4_rejections(headers: dict[str, str], body: bytes, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment):
        RING.authenticate(headers, "POST", URL, body)


def test_known_key_with_broken_host_is_an_auth_error_not_a_crash() -> None:
    # A bracket the URL parser chokes on, reached only after the key id is found.
    for host in ("[", "[::1", "a]b", "gw.example:99999999"):
        headers = {**signed(), "host": host}
        with pytest.raises(AuthError):
            RING.authenticate(headers, "POST", lambda h=host: f"http://{h}/model/m/converse", BODY)  # type: ignore[misc]


def test_the_window_is_kept_at_15_minutes() -> None:
    t = time.time()
    assert RING.authenticate(signed(when=t - 14 * 60), "POST", URL, BODY, now=t).name == "a"
    with pytest.raises(AuthError, match="15 minutes"):
        RING.authenticate(signed(when=t - 16 * 60), "POST", URL, BODY, now=t)


def test_signed_payload_hash_that_matches_is_accepted() -> None:
    sha = hashlib.sha256(BODY).hexdigest()
    assert RING.authenticate(signed(headers={"x-amz-content-sha256": sha}), "POST", URL, BODY).name == "a"


def test_unsigned_payload_only_when_enabled_and_over_tls() -> None:
    allowing = ring("sigv4: {allow_unsigned_payload: true}")
    assert allowing.authenticate(signed(unsigned_payload=True), "POST", URL, BODY).name == "a"
    plain = URL.replace("https://", "http://")
    with pytest.raises(AuthError, match="only over TLS"):
        allowing.authenticate(signed(unsigned_payload=True, url=plain), "POST", plain, BODY)


def test_region_is_checked_where_configured() -> None:
    eu_akid, eu_secret = "AKIAEUROPE0000000001", "eu-secret"
    assert RING.identify(signed(region="ap-south-1"), "POST", URL, BODY).region == "ap-south-1"  # any, recorded
    eu = signed(region="eu-west-1", akid=eu_akid, secret=eu_secret)
    assert RING.authenticate(eu, "POST", URL, BODY).name == "eu"
    with pytest.raises(AuthError, match=r"region 'us-east-1'.*'eu-west-1'"):
        RING.authenticate(signed(akid=eu_akid, secret=eu_secret), "POST", URL, BODY)
    pinned = ring("sigv4: {region: us-east-1}")
    with pytest.raises(AuthError, match="region 'us-west-2'"):
        pinned.authenticate(signed(region="us-west-2"), "POST", URL, BODY)
    assert pinned.authenticate(signed(), "POST", URL, BODY).name == "a"


def test_exact_replay_is_refused_and_forget_lets_a_retry_in() -> None:
    keys = ring("sigv4: {replay_cache_size: 1000}")
    headers = signed()
    ident = keys.identify(headers, "POST", URL, BODY)
    with pytest.raises(AuthError, match="already received"):
        keys.identify(headers, "POST", URL, BODY)
    keys.forget(ident)
    assert keys.identify(headers, "POST", URL, BODY).name == "a"
    # A bad signature is never remembered, so it cannot fill the cache.
    assert keys.replays is not None and len(keys.replays) == 1


def test_replay_cache_is_bounded_and_forgets_expired_signatures() -> None:
    cache = ReplayCache(2)
    assert not cache.check_and_remember(b"a", expires=100, now=0)
    assert cache.check_and_remember(b"a", expires=100, now=50)
    assert not cache.check_and_remember(b"b", expires=200, now=50)
    assert not cache.check_and_remember(b"c", expires=200, now=50)
    assert len(cache) == 2 and not cache.check_and_remember(b"a", expires=300, now=60)  # evicted, LRU
    assert not cache.check_and_remember(b"b", expires=400, now=250)  # b expired at 200
    assert len(cache) <= 2


def test_session_header_counts_for_sigv4_only_when_signed() -> None:
    unsigned = {**signed(), "x-tokenfuse-session": "run-1"}
    assert RING.identify(unsigned, "POST", URL, BODY).session(unsigned) is None
    with_session = signed(headers={"x-tokenfuse-session": "run-1"})
    assert RING.identify(with_session, "POST", URL, BODY).session(with_session) == "run-1"
    bearer = {"authorization": "Bearer plain-key", "x-tokenfuse-session": "run-2"}
    assert RING.identify(bearer, "POST", URL, BODY).session(bearer) == "run-2"


def test_sigv4_tampered_signed_header() -> None:
    headers = signed()
    headers["content-type"] = "text/plain"
    with pytest.raises(AuthError, match="does not match"):
        RING.authenticate(headers, "POST", URL, BODY)


# -- hostile input: AuthError or a key, nothing else ---------------------------------------------

_NAMES = st.sampled_from(
    ["authorization", "host", "x-amz-date", "x-amz-content-sha256", "x-api-key", "api-key", "content-type",
     "x-tokenfuse-session", "x-amz-security-token"]
)
_TEXT = st.text(max_size=80) | st.text(alphabet="[]:/@?#%.;,= \t\r\n\x00aA0", max_size=30)
_SIGV4_AUTH = st.builds(
    lambda akid, date, region, service, signed_names, sig: (
        f"AWS4-HMAC-SHA256 Credential={akid}/{date}/{region}/{service}/aws4_request, "
        f"SignedHeaders={signed_names}, Signature={sig}"
    ),
    st.sampled_from([AKID, "AKIAUNKNOWN000000000", ""]) | _TEXT,
    st.sampled_from([datetime.now(UTC).strftime("%Y%m%d"), "00000000", "99999999"]) | _TEXT,
    st.sampled_from(["us-east-1", "eu-west-1", ""]) | _TEXT,
    st.sampled_from(["bedrock", "s3"]) | _TEXT,
    st.sampled_from(["content-type;host;x-amz-date", "host", "host;x-amz-date;x-tokenfuse-session"]) | _TEXT,
    st.sampled_from(["0" * 64, "f" * 64]) | _TEXT,
)
_VALUES = _TEXT | _SIGV4_AUTH | st.sampled_from([datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), "[", "UNSIGNED-PAYLOAD"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(_NAMES | st.text(max_size=20), _VALUES, max_size=8),
    method=st.sampled_from(["POST", "GET", ""]) | st.text(max_size=10),
    url=st.sampled_from([URL, "http://[/model/x/converse", ""]) | st.text(max_size=60).map(lambda t: "http://" + t),
    body=st.binary(max_size=200),
)
def test_any_input_is_a_key_or_an_auth_error(headers: dict[str, str], method: str, url: str, body: bytes) -> None:
    try:
        result = RING.authenticate(headers, method, url, body)
    except AuthError as exc:
        assert exc.message
    else:
        assert isinstance(result, KeyConfig)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["authorization", "host", "x-amz-date", "content-type", "x-amz-content-sha256"]),
       value=_VALUES, body=st.binary(max_size=64) | st.just(BODY))
def test_a_signed_request_changed_anywhere_is_refused(name: str, value: str, body: bytes) -> None:
    headers = signed()
    changed = headers.get(name) != value or body != BODY
    headers[name] = value
    try:
        RING.authenticate(headers, "POST", URL, body)
    except AuthError:
        return
    assert not changed, (name, value, body)
