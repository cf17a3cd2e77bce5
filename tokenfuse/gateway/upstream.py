"""Where a request goes and with which credentials.

Upstream credentials come from the config (or, for SigV4, botocore's default
credential chain); the caller's own credential headers are never forwarded.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tokenfuse.config import Config, UpstreamConfig
from tokenfuse.pricing import MAX_MODEL_NAME, canonical_model, canonical_pattern

# Headers a client sends that are about its own connection or its own
# credentials; everything else that a provider understands is passed on.
DROP_REQUEST_HEADERS = frozenset(
    {
        "host", "connection", "keep-alive", "content-length", "transfer-encoding", "te", "upgrade",
        "proxy-authorization", "authorization", "x-api-key", "api-key", "accept-encoding",
        "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "x-tokenfuse-session",
        "expect",
    }
)
DROP_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "content-length", "transfer-encoding", "content-encoding", "server", "date"}
)


class NoUpstream(Exception):
    pass


@dataclass(slots=True)
class Upstream:
    config: UpstreamConfig
    _credentials: Any = None

    @property
    def name(self) -> str:
        return self.config.name

    def url(self, route_path: str) -> str:
        return self.config.base_url + route_path

    def auth_headers(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        cfg = self.config
        if cfg.auth in ("bearer", "api_key"):
            if cfg.api_key:
                headers["authorization"] = f"Bearer {cfg.api_key}"
        elif cfg.auth == "x-api-key":
            if cfg.api_key:
                headers["x-api-key"] = cfg.api_key
        elif cfg.auth == "sigv4":
            creds = self._sigv4_credentials()
            req = AWSRequest(method=method, url=url, data=body, headers=headers)
            SigV4Auth(creds, "bedrock", cfg.region or "us-east-1").add_auth(req)
            return dict(req.headers.items())
        return headers

    def _sigv4_credentials(self) -> Any:
        if self._credentials is None:
            cfg = self.config
            if cfg.aws_access_key_id and cfg.aws_secret_access_key:
                self._credentials = Credentials(
                    cfg.aws_access_key_id, cfg.aws_secret_access_key, cfg.aws_session_token
                )
            else:
                import botocore.session

                found = botocore.session.get_session().get_credentials()
                if found is None:
                    raise NoUpstream(
                        f"upstream {cfg.name!r} uses SigV4 but no AWS credentials were found; set "
                        "aws_access_key_id/aws_secret_access_key on the upstream or configure the AWS chain"
                    )
                self._credentials = found
        # Refreshable chain credentials rotate; freeze per request.
        creds = self._credentials
        return creds.get_frozen_credentials() if hasattr(creds, "get_frozen_credentials") else creds


class Router:
    def __init__(self, config: Config) -> None:
        # Per protocol, in config order: each upstream with its globs, each as
        # written (lower-cased) and as matched against canonical ids.
        self._by_protocol: dict[str, list[tuple[Upstream, tuple[str, ...]]]] = {}
        for u in config.upstreams:
            globs = {g for raw in u.models or () for g in (raw.strip().lower(), canonical_pattern(raw))}
            self._by_protocol.setdefault(u.protocol, []).append((Upstream(u), tuple(sorted(globs))))
        self._cache: dict[tuple[str, str], Upstream | None] = {}

    def pick(self, protocol: str, model: str) -> Upstream | None:
        """The first upstream of the protocol whose `models` globs match the model.

        A glob matches when it matches the model's canonical id (so every
        spelling of one model routes alike) or the name as sent, lower-cased
        and trimmed (so a glob over Bedrock ids such as ``us.anthropic.*``
        still routes what it names).
        """
        key = (protocol, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        names = {canonical_model(model), model.strip().lower()}
        chosen: Upstream | None = None
        for up, globs in self._by_protocol.get(protocol, ()):
            if not globs or any(fnmatch.fnmatchcase(n, g) for g in globs for n in names):
                chosen = up
                break
        if len(self._cache) < 10_000 and len(model) <= MAX_MODEL_NAME:
            self._cache[key] = chosen
        return chosen


def bedrock_path(model_id: str, action: str) -> str:
    # The model id goes back on the wire percent-encoded (ARNs carry ':' and '/').
    return f"/model/{quote(model_id, safe='')}/{action}"
