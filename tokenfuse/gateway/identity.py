"""Who is calling: virtual keys and SigV4-signed Bedrock requests.

Keys are held only as SHA-256 digests, so a presented secret is hashed once
and looked up in a dict; the plaintext never outlives the request and is never
logged. A SigV4 request is trusted only after its signature verifies against
the secret configured for its access key id (botocore computes it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokenfuse.config import Config, KeyConfig

_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request"
    r"\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-f]{64})"
)
MAX_CLOCK_SKEW_S = 15 * 60


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    key: KeyConfig

    @property
    def name(self) -> str:
        return self.key.name


class KeyRing:
    def __init__(self, config: Config) -> None:
        self._by_digest: dict[str, KeyConfig] = {}
        self._by_akid: dict[str, KeyConfig] = {}
        for k in config.keys:
            d = k.digest()
            if d is not None:
                self._by_digest[d] = k
            if k.aws_access_key_id:
                self._by_akid[k.aws_access_key_id] = k

    def by_secret(self, secret: str) -> KeyConfig | None:
        return self._by_digest.get(hashlib.sha256(secret.encode()).hexdigest())

    def authenticate(
        self,
        headers: Mapping[str, str],
        method: str,
        url: str | Callable[[], str],
        body: bytes,
        now: float | None = None,
    ) -> KeyConfig:
        """Resolve the caller from its headers (lower-cased names); raise AuthError.

        ``url`` may be a callable: only SigV4 needs the URL, so the common path
        does not build it.
        """
        auth = headers.get("authorization")
        if auth is not None:
            if auth.startswith("AWS4-HMAC-SHA256"):
                return self._sigv4(auth, headers, method, url() if callable(url) else url, body, now)
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self._secret(token.strip())
            raise AuthError("the Authorization header must be `Bearer <tokenfuse key>` or an AWS SigV4 signature")
        for name in ("x-api-key", "api-key"):
            value = headers.get(name)
            if value:
                return self._secret(value.strip())
        raise AuthError(
            "no API key: send your tokenfuse key as `Authorization: Bearer <key>`, `x-api-key` or `api-key`"
        )

    def _secret(self, secret: str) -> KeyConfig:
        key = self.by_secret(secret)
        if key is None:
            raise AuthError("the API key is not a tokenfuse key configured on this gateway")
        return key

    def _sigv4(
        self, auth: str, headers: Mapping[str, str], method: str, url: str, body: bytes, now: float | None
    ) -> KeyConfig:
        m = _SIGV4.match(auth)
        if m is None:
            raise AuthError("malformed AWS SigV4 Authorization header")
        key = self._by_akid.get(m["akid"])
        if key is None or not key.aws_secret_access_key:
            raise AuthError("the AWS access key id is not configured on this gateway")
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise AuthError("SigV4 request without a valid X-Amz-Date header") from None
        if abs((time.time() if now is None else now) - signed_at) > MAX_CLOCK_SKEW_S:
            raise AuthError("the SigV4 signature is more than 15 minutes old or in the future; check the clock")
        signed = m["signed"].split(";")
        request = AWSRequest(method=method, url=url, data=body)
        for name in signed:
            value = headers.get(name)
            if value is None:
                raise AuthError(f"SigV4 signed header {name!r} is missing from the request")
            request.headers[name] = value
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(m["akid"], key.aws_secret_access_key), m["service"], m["region"]
        )
        signer._region_name = m["region"]
        # The payload hash the client signed must match the body we received,
        # otherwise a valid signature could be replayed over another body.
        claimed = headers.get("x-amz-content-sha256")
        if claimed is not None and claimed != "UNSIGNED-PAYLOAD" and claimed != hashlib.sha256(body).hexdigest():
            raise AuthError("the body does not match the signed x-amz-content-sha256")
        canonical = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical)
        expected = signer.signature(string_to_sign, request)
        if not hmac.compare_digest(expected, m["sig"]):
            raise AuthError("the SigV4 signature does not match; check the secret access key")
        return key
