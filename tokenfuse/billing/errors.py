"""The one error type billing commands turn into a single line on stderr."""

from __future__ import annotations


class BillingInputError(Exception):
    """Bad user input: the message names the file, the column and the fix."""
