from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.protocols.base import string_values_bytes
from tokenfuse.protocols.estimate import tokens_from_bytes


def test_rounds_up() -> None:
    assert [tokens_from_bytes(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert tokens_from_bytes(-3) == 0


@given(st.text(max_size=40), st.text(max_size=40))
def test_string_values_bytes_counts_decoded_utf8(a: str, b: str) -> None:
    import json

    for ensure_ascii in (True, False):
        data = json.dumps(
            {"delta": {"text": a}, "other": {"text": b}, "n": 1}, ensure_ascii=ensure_ascii
        ).encode()
        expected = len(a.encode("utf-8", "surrogatepass")) + len(b.encode("utf-8", "surrogatepass"))
        assert string_values_bytes(data, (b"text",)) == expected


def test_non_string_values_are_skipped() -> None:
    assert string_values_bytes(b'{"content":[{"text":"ab"}],"content":null}', (b"content", b"text")) == 2
