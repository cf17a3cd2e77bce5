"""A private PostgreSQL schema per test, so tests sharing the `test` database
(and other suites' rows there) never see each other's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote


def private_schema_url(base_url: str) -> Iterator[str]:
    """Yield a store URL whose tables live in a fresh schema, dropped afterwards.

    The connection's ``application_name`` is the schema name, so a test can find
    (and terminate) its own server connections in ``pg_stat_activity``.
    """
    import psycopg

    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options={quote(f'-csearch_path={name}')}&application_name={name}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
