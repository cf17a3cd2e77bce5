"""Opening the gateway's ledger for a billing command: every way it can fail is
a `BillingInputError` that names the option or key the user gave it."""

from __future__ import annotations

from typing import Any

from tokenfuse.billing.errors import BillingInputError


def open_ledger(url: str, where: str, hint: str) -> tuple[Any, str]:
    """A DB-API connection to the ledger at `url` and its dialect.

    `where` names the option or key the URL came from (``--ledger``, ``store``);
    `hint` says where to point it when the SQLite file does not exist.
    """
    from tokenfuse.ledger.schema import StoreURL, connect, redact

    try:
        store = StoreURL.parse(url)
    except ValueError as e:
        raise BillingInputError(f"{where}: {e}") from e
    if not store.exists():
        raise BillingInputError(f"{where}: {store.target}: no such ledger file; {hint}")
    try:
        return connect(url), store.dialect
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BillingInputError(f"{where}: cannot open the ledger {redact(url)} ({first})") from e
