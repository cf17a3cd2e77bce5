from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.simulator.reply import Reply, Template, dumps, hole, jstr
from tokenfuse.usage import Usage


@given(st.text(), st.text(), st.integers())
def test_template_fill_equals_serialising_the_filled_value(a: str, b: str, n: int) -> None:
    template = Template({"x": [hole(1)], "y": hole(0), "n": hole(2), "z": None}, b"data: ", b"\n\n")
    filled = template.fill(jstr(a), jstr(b), str(n).encode())
    assert filled == b"data: " + dumps({"x": [b], "y": a, "n": n, "z": None}) + b"\n\n"
    assert json.loads(filled[6:]) == {"x": [b], "y": a, "n": n, "z": None}


def test_template_without_holes_is_constant() -> None:
    assert Template({"a": 1}).fill() == b'{"a":1}'


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=20))
def test_deltas_cover_the_text_in_chunk_sized_pieces(size: int, chunk: int) -> None:
    reply = Reply(id="r", model="m", usage=Usage(), text="x" * size, chunk_tokens=chunk)
    deltas = reply.deltas()
    assert "".join(deltas) == reply.text
    assert all(len(d) == 4 * chunk for d in deltas[:-1])
