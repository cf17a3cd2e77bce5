"""Secrets never reach a log line, whichever library logs it, at any level.

At debug level botocore logs every canonical request it signs (with the
upstream's ``x-amz-security-token``) and every signature; HTTP libraries log
header dicts. Handlers come and go (uvicorn installs its own after start-up),
so redaction happens where every record is born: a log-record factory scrubs
the formatted message, the traceback text and the stack text of each record a
logger has decided to emit. Two kinds of secret are scrubbed:

* values in known credential positions: ``Authorization``, ``x-api-key``,
  ``api-key``, ``x-amz-security-token``, cookies, ``Bearer <token>``, SigV4
  ``Signature=``, credential query parameters and URL passwords;
* every secret in the configuration (keys, upstream credentials, admin
  token, webhook header values), wherever it appears.

botocore's own loggers are also kept at INFO or above: their debug output is
the SDK's internals on the request path, not something an operator needs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from tokenfuse.config import Config

REDACTED = "[REDACTED]"
# Shorter configured values are too likely to be ordinary words to scrub everywhere.
MIN_SECRET_LEN = 6
NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")

_HEADER_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key|x-amz-security-token|(?:set-)?cookie"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Name: value`, `name:value` (canonical requests), `'Name': 'value'`, `"name": "value"`,
    # `'Name': b'value'`; the value ends at a quote, a line end or an escaped line end.
    (re.compile(rf"(?i)({_HEADER_NAMES})(['\"]?\s*[:=]\s*(?:b?['\"])?)[^'\"`\r\n\\]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(signature\s*[=:]\s*)[0-9a-f]{64}"), rf"\1{REDACTED}"),
    (
        re.compile(r"(?i)([?&](?:x-amz-security-token|x-amz-signature|key|api_key|apikey|access_token|token)=)[^&\s'\"]+"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"/]+@"), rf"\1{REDACTED}@"),
)

_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
_installed = False


def redact(text: str) -> str:
    """``text`` with every secret it carries replaced by ``[REDACTED]``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    configured = _secret_pattern
    if configured is not None:
        text = configured.sub(REDACTED, text)
    return text


def config_secrets(config: Config) -> set[str]:
    found: set[str | None] = {config.server.admin_token}
    for k in config.keys:
        found |= {k.key, k.aws_secret_access_key}
    for u in config.upstreams:
        found |= {u.api_key, u.aws_secret_access_key, u.aws_session_token, *u.headers.values()}
    for w in config.alerts.webhooks:
        found |= set(w.headers.values())
    return {s for s in found if s and len(s) >= MIN_SECRET_LEN}


def add_secrets(secrets: Iterable[str]) -> None:
    global _secret_pattern
    _secrets.update(s for s in secrets if len(s) >= MIN_SECRET_LEN)
    if _secrets:
        # Longest first, so a secret that contains another is scrubbed whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def scrub(record: logging.LogRecord) -> None:
    """Redact a record in place: message, traceback text and stack text."""
    try:
        message = record.getMessage()
    except Exception:
        return  # a broken format string; logging itself reports it when the record is handled
    clean = redact(message)
    if clean != message:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) for a in args):
            # Keep the arguments when scrubbing them suffices (formatters such as
            # uvicorn's access log read record.args).
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if record.getMessage() != clean:
            record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install(config: Config | None = None) -> None:
    """Scrub every log record from now on; idempotent, secrets accumulate
    (several gateways in one process each add theirs)."""
    global _installed
    if config is not None:
        add_secrets(config_secrets(config))
        level = max(logging.INFO, logging.getLevelName(config.server.log_level.upper()))
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level < level:
                logger.setLevel(level)
    if _installed:
        return
    _installed = True
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub(record)
        return record

    logging.setLogRecordFactory(factory)
