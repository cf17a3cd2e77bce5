"""A private PostgreSQL schema per test, so tests sharing the `test` database
(and other engineers' kill switches there) never see each other's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote


def private_schema_url(base_url: str) -> Iterator[str]:
    import psycopg

    name = f"tf_limits_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
