"""Who is calling: virtual keys and SigV4-signed Bedrock requests.

Keys are held only as SHA-256 digests, so a presented secret is hashed once
and looked up in a dict; the plaintext never outlives the request and is never
logged. A SigV4 request is trusted only after its signature verifies against
the secret configured for its access key id (botocore computes it), with the
checks AWS itself makes: credential scope, 15-minute clock window, payload hash.

Whatever a caller sends, the only exception that leaves this module is
:class:`AuthError`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokenfuse.config import Config, KeyConfig, SigV4Config
from tokenfuse.control.keys import RuntimeKeys

_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]{1,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,64})/"
    r"(?P<service>[a-z0-9-]{1,64})/aws4_request\s*,\s*SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*)"
    r"\s*,\s*Signature=(?P<sig>[0-9a-f]{64})\s*"
)
# A host name, IPv4 or bracketed IPv6 address, and an optional port: anything
# else cannot be the authority the client signed.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(?::[0-9]{1,5})?")
MAX_CLOCK_SKEW_S = 15 * 60
MAX_AUTHORIZATION_LEN = 4096
# The signing name boto3 uses for the `bedrock-runtime` client (its service
# model's `signingName`), and so the service in every Bedrock credential scope.
BEDROCK_SERVICE = "bedrock"
SESSION_HEADER = "x-tokenfuse-session"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

# One message for an unknown access key id and for a wrong secret, so the
# answer does not tell a prober which key ids exist.
BAD_SIGNATURE = (
    "the AWS SigV4 signature does not match: the access key id is not configured on this gateway "
    "or the secret access key is wrong; check both against the tokenfuse key you were given"
)
MALFORMED_SIGV4 = (
    "malformed AWS SigV4 request: expected `Authorization: AWS4-HMAC-SHA256 Credential=<key id>/"
    "<yyyymmdd>/<region>/bedrock/aws4_request, SignedHeaders=<names>, Signature=<64 hex>`, an `X-Amz-Date` "
    "and a valid `Host`; sign with an AWS SDK or the AWS CLI"
)
# Signing work for an unknown key id uses this secret, so both cases cost the same.
_DECOY_SECRET = "tokenfuse-decoy-secret-never-matches"


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller and what its credential proved."""

    key: KeyConfig
    # SigV4 only: the credential scope's region, and the header names the
    # signature covers (None for a bearer key, which proves no header).
    region: str | None = None
    signed_headers: frozenset[str] | None = None
    replay_token: bytes | None = None

    @property
    def name(self) -> str:
        return self.key.name

    def session(self, headers: Mapping[str, str]) -> str | None:
        """The ``x-tokenfuse-session`` to trust: a SigV4 caller's counts only if
        signed (else a captured request could be replayed under another
        session's caps); a bearer key's holder names its sessions freely."""
        if self.signed_headers is not None and SESSION_HEADER not in self.signed_headers:
            return None
        return headers.get(SESSION_HEADER) or None


class ReplayCache:
    """SigV4 signatures already accepted, each until its clock window closes.

    Bounded LRU: past ``size`` entries the oldest is forgotten, so the
    guarantee holds for up to ``size`` SigV4 requests per 15 minutes per
    process (a replay sent to another replica is not seen).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def check_and_remember(self, token: bytes, expires: float, now: float) -> bool:
        """True if ``token`` was seen and is still valid; otherwise remember it."""
        entries = self._expiry
        while entries:
            oldest, until = next(iter(entries.items()))
            if until > now:
                break
            del entries[oldest]
        seen = entries.get(token)
        if seen is not None and seen > now:
            return True
        entries[token] = expires
        entries.move_to_end(token)
        if len(entries) > self.size:
            entries.popitem(last=False)
        return False

    def forget(self, token: bytes) -> None:
        self._expiry.pop(token, None)


class KeyRing:
    """The config's keys, then the run-time keys (``tokenfuse keys``), if the gateway has them."""

    def __init__(self, config: Config, runtime: RuntimeKeys | None = None) -> None:
        self.runtime = runtime
        self._by_digest: dict[str, KeyConfig] = {}
        self._by_akid: dict[str, KeyConfig] = {}
        for k in config.keys:
            d = k.digest()
            if d is not None:
                self._by_digest[d] = k
            if k.aws_access_key_id:
                self._by_akid[k.aws_access_key_id] = k
        self.sigv4: SigV4Config = config.sigv4
        self.replays = ReplayCache(config.sigv4.replay_cache_size) if config.sigv4.replay_cache_size else None

    def by_secret(self, secret: str) -> KeyConfig | None:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
        key = self._by_digest.get(digest)
        if key is None and self.runtime is not None:
            key = self.runtime.get(digest)
        return key

    def authenticate(
        self,
        headers: Mapping[str, str],
        method: str,
        url: str | Callable[[], str],
        body: bytes,
        now: float | None = None,
    ) -> KeyConfig:
        """The caller's key; see :meth:`identify`."""
        return self.identify(headers, method, url, body, now).key

    def identify(
        self,
        headers: Mapping[str, str],
        method: str,
        url: str | Callable[[], str],
        body: bytes,
        now: float | None = None,
    ) -> Identity:
        """Resolve the caller from its headers (lower-cased names); raise AuthError.

        ``url`` may be a callable: only SigV4 needs the URL, so the common path
        does not build it.
        """
        try:
            return self._identify(headers, method, url, body, now)
        except AuthError:
            raise
        except Exception:
            # Whatever hostile input makes a parser (urllib, botocore) raise is a refusal, not a 500.
            raise AuthError(MALFORMED_SIGV4) from None

    def forget(self, identity: Identity) -> None:
        """Let the same signed request in again: call when it was refused before
        reaching the provider, so an SDK's retry within the same second (same
        timestamp, so same signature) is not taken for a replay."""
        if identity.replay_token is not None and self.replays is not None:
            self.replays.forget(identity.replay_token)

    def _identify(
        self,
        headers: Mapping[str, str],
        method: str,
        url: str | Callable[[], str],
        body: bytes,
        now: float | None,
    ) -> Identity:
        auth = headers.get("authorization")
        if auth is not None:
            if auth.startswith("AWS4-HMAC-SHA256"):
                return self._sigv4(auth, headers, method, url() if callable(url) else url, body, now)
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return Identity(self._secret(token.strip()))
            raise AuthError("the Authorization header must be `Bearer <tokenfuse key>` or an AWS SigV4 signature")
        for name in ("x-api-key", "api-key"):
            value = headers.get(name)
            if value:
                return Identity(self._secret(value.strip()))
        raise AuthError(
            "no API key: send your tokenfuse key as `Authorization: Bearer <key>`, `x-api-key` or `api-key`"
        )

    def _secret(self, secret: str) -> KeyConfig:
        key = self.by_secret(secret)
        if key is None:
            raise AuthError("the API key is not a tokenfuse key configured on this gateway")
        if key.expires is not None and key.expires.timestamp() <= time.time():
            raise AuthError(
                f"the API key {key.name!r} expired at {key.expires.isoformat()}; ask the operator for a new one"
            )
        return key

    def _sigv4(
        self, auth: str, headers: Mapping[str, str], method: str, url: str, body: bytes, now: float | None
    ) -> Identity:
        # Everything that does not depend on the key is checked before the key
        # id is looked up, so no answer differs between known and unknown ids.
        m = _SIGV4.fullmatch(auth) if len(auth) <= MAX_AUTHORIZATION_LEN else None
        if m is None:
            raise AuthError(MALFORMED_SIGV4)
        region, service = m["region"], m["service"]
        if service != BEDROCK_SERVICE:
            raise AuthError(
                f"the SigV4 credential scope is for service {service!r}; this gateway serves Bedrock, signed for "
                f"service `{BEDROCK_SERVICE}` (the boto3 `bedrock-runtime` client does this)"
            )
        if self.sigv4.region is not None and region != self.sigv4.region:
            raise AuthError(self._region_message(region, self.sigv4.region))
        host = headers.get("host")
        if host is None or _HOST.fullmatch(host) is None:
            raise AuthError(MALFORMED_SIGV4)
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise AuthError("SigV4 request without a valid X-Amz-Date header (yyyymmddThhmmssZ)") from None
        now = time.time() if now is None else now
        if abs(now - signed_at) > MAX_CLOCK_SKEW_S:
            raise AuthError("the SigV4 signature is more than 15 minutes old or in the future; check the clock")
        if m["date"] != amz_date[:8]:
            raise AuthError("the SigV4 credential scope date is not the date of X-Amz-Date; sign the request afresh")
        signed = m["signed"].split(";")
        if "host" not in signed:
            raise AuthError("the SigV4 signature must cover the Host header; sign with an AWS SDK or the AWS CLI")
        scheme = urlsplit(url).scheme
        body_hash = hashlib.sha256(body).hexdigest()
        # The payload hash is always part of what is verified: the caller's
        # x-amz-content-sha256 if it sent one, else the hash of the body as
        # received (boto3 sends none for Bedrock, as AWS allows outside S3).
        claimed = headers.get("x-amz-content-sha256")
        if claimed == UNSIGNED_PAYLOAD:
            if not self.sigv4.allow_unsigned_payload:
                raise AuthError(
                    "x-amz-content-sha256: UNSIGNED-PAYLOAD is refused: the signature must cover the body; "
                    "sign the payload (the AWS SDKs' default) or ask the operator to set "
                    "sigv4.allow_unsigned_payload (TLS only)"
                )
            if scheme != "https":
                raise AuthError("UNSIGNED-PAYLOAD is accepted only over TLS; connect with https://")
        elif claimed is not None and claimed != body_hash:
            raise AuthError(
                "the body does not match the signed x-amz-content-sha256; send the body that was signed"
            )
        request = AWSRequest(method=method, url=url, data=body)
        for name in signed:
            value = headers.get(name)
            if value is None:
                raise AuthError(f"SigV4 signed header {name!r} is missing from the request")
            request.headers[name] = value
        request.context["timestamp"] = amz_date
        key = self._by_akid.get(m["akid"])
        secret = key.aws_secret_access_key if key is not None and key.aws_secret_access_key else _DECOY_SECRET
        signer = SigV4Auth(Credentials(m["akid"], secret), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected, m["sig"]) or key is None:
            raise AuthError(BAD_SIGNATURE)
        # The caller has proven the key: messages from here on may be specific.
        if key.expires is not None and key.expires.timestamp() <= now:
            raise AuthError(f"the key {key.name!r} expired at {key.expires.isoformat()}; ask the operator for a new one")
        if key.aws_region is not None and region != key.aws_region:
            raise AuthError(self._region_message(region, key.aws_region))
        token = bytes.fromhex(m["sig"])[:16]
        if self.replays is not None and self.replays.check_and_remember(token, signed_at + MAX_CLOCK_SKEW_S, now):
            raise AuthError(
                "this exact signed request was already received: a SigV4 signature is accepted once; "
                "sign each request afresh (the AWS SDKs do)"
            )
        return Identity(key, region=region, signed_headers=frozenset(signed), replay_token=token)

    @staticmethod
    def _region_message(got: str, want: str) -> str:
        return (
            f"the SigV4 credential scope is for region {got!r}, but this gateway accepts {want!r} here; "
            f"set region_name={want!r} on the client"
        )
