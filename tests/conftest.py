"""Shared fixtures: when a service test skips or fails, and the stores (an SQLite file, a private PostgreSQL schema)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgschema import private_schema_url

REQUIRE_SERVICES = os.environ.get("TOKENFUSE_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("TOKENFUSE_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("TOKENFUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def unavailable(what: str, why: object) -> None:
    """Skip visibly, or fail when TOKENFUSE_REQUIRE_SERVICES=1 (CI demands the services)."""
    message = f"{what} is not reachable ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and TOKENFUSE_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message}; start it, or set TOKENFUSE_REQUIRE_SERVICES=1 to make this a failure")


def require_service(name: str, host: str, port: int) -> None:
    if not _reachable(host, port):
        unavailable(name, f"nothing listens on {host}:{port}")


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL store in a private schema (see tests/pgschema.py)."""
    yield from private_schema_url(postgres_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The same test against an SQLite file and a private PostgreSQL schema."""
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("pg_url")
    return url
