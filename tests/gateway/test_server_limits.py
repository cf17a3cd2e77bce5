"""The pure parts of the client limits: defaults from the open-file limit, the
start-up warning and the error response, without a server."""

from __future__ import annotations

import json

from tokenfuse.config import ServerConfig
from tokenfuse.gateway.server_limits import (
    AUTO_MAX_CONNECTIONS,
    ServerLimits,
    default_max_connections,
    error_response,
    open_file_warning,
    protocol_for,
)


def test_max_connections_defaults_to_half_the_open_file_limit() -> None:
    assert default_max_connections(1024) == 512
    assert default_max_connections(20_000) == AUTO_MAX_CONNECTIONS
    assert default_max_connections(None) == AUTO_MAX_CONNECTIONS
    assert default_max_connections(10) == 16


def test_limits_from_config() -> None:
    limits = ServerLimits.from_config(ServerConfig(), 1024)
    assert limits == ServerLimits(
        header_timeout_s=10.0, body_timeout_s=30.0, max_header_bytes=65536,
        max_connections=512, max_connections_per_client=256,
    )
    explicit = ServerLimits.from_config(ServerConfig(max_connections=900, max_connections_per_client=None), 1024)
    assert (explicit.max_connections, explicit.max_connections_per_client) == (900, None)


def test_warning_when_max_connections_is_near_the_open_file_limit() -> None:
    assert open_file_warning(800, 1000) is None
    assert open_file_warning(10_000, None) is None
    warning = open_file_warning(900, 1000)
    assert warning is not None
    assert "ulimit -n" in warning and "at most 800" in warning


def test_error_response_is_complete_http_that_both_sdks_read() -> None:
    raw = error_response(408, "request_timeout", "too slow")
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in lines
    assert f"content-length: {len(body)}".encode() in lines
    doc = json.loads(body)
    assert doc["type"] == "error"  # Anthropic
    assert doc["error"] == {"type": "request_timeout", "code": "request_timeout", "message": "too slow"}  # OpenAI


def test_each_server_gets_its_own_connection_table() -> None:
    limits = ServerLimits.from_config(ServerConfig(), 1024)
    a, b = protocol_for(limits), protocol_for(limits)
    assert a.limits is limits and a.per_client is not b.per_client
