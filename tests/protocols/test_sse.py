from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.protocols.sse import SSEEvent, SSEParser


def parse_all(chunks: list[bytes], keep_raw: bool = True) -> tuple[list[SSEEvent], bytes]:
    p = SSEParser(keep_raw=keep_raw)
    events: list[SSEEvent] = []
    for c in chunks:
        events += p.feed(c)
    events += p.finish()
    return events, p.pending


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def test_fields_comments_and_multiline_data() -> None:
    stream = b': keep-alive\nevent: message_start\nid: 7\nretry: 100\ndata: {"a":\ndata:1}\n\n'
    (ev,), pending = parse_all([stream])
    assert ev.event == b"message_start"
    assert ev.data == b'{"a":\n1}'
    assert ev.raw == stream
    assert pending == b""


def test_each_line_ending_style() -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        stream = b"data: one" + eol + eol + b"event: x" + eol + b"data: two" + eol + eol
        events, pending = parse_all([stream])
        assert [(e.event, e.data) for e in events] == [(None, b"one"), (b"x", b"two")]
        assert b"".join(e.raw for e in events) == stream
        assert pending == b""


def test_only_one_leading_space_is_removed_and_no_colon_means_empty_value() -> None:
    (ev,), _ = parse_all([b"data:  two spaces\ndata\n\n"])
    assert ev.data == b" two spaces\n"


def test_event_without_data_is_reported_with_none() -> None:
    (ev,), _ = parse_all([b": ping\n\n"])
    assert ev.data is None and ev.raw == b": ping\n\n"


def test_unterminated_event_stays_pending_and_is_not_dispatched() -> None:
    events, pending = parse_all([b"data: a\n\ndata: b\n"])
    assert [e.data for e in events] == [b"a"]
    assert pending == b"data: b\n"


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    events, pending = parse_all([b"data: a\r", b"\n\r", b"\n"])
    assert [(e.data, e.raw) for e in events] == [(b"a", b"data: a\r\n\r\n")]
    assert pending == b""


def test_trailing_lone_cr_is_resolved_at_finish() -> None:
    events, pending = parse_all([b"data: a\r\r"])
    assert [e.data for e in events] == [b"a"]
    assert pending == b""


def test_raw_is_empty_unless_asked() -> None:
    (ev,), _ = parse_all([b"data: a\n\n"], keep_raw=False)
    assert ev.raw == b"" and ev.data == b"a"


_value = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_line = st.one_of(
    _value.map(lambda v: b"data: " + v),
    _value.map(lambda v: b"data:" + v),
    _value.map(lambda v: b"event: " + v),
    _value.map(lambda v: b":" + v),
    st.just(b"data"),
)
_event = st.lists(_line, min_size=1, max_size=4)
_stream = st.tuples(
    st.lists(_event, max_size=8),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@given(_stream, st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_gives_the_same_events_and_spans(
    stream: tuple[list[list[bytes]], bytes, bytes], cuts: list[int]
) -> None:
    events, eol, tail = stream
    data = b"".join(eol.join(lines) + eol + eol for lines in events) + tail
    whole, whole_pending = parse_all([data])
    pieces, pieces_pending = parse_all(split(data, cuts))
    assert pieces == whole
    assert pieces_pending == whole_pending
    # The spans tile the input exactly: nothing lost, nothing duplicated.
    assert b"".join(e.raw for e in pieces) + pieces_pending == data
    assert len(whole) == len(events)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_never_crash_and_spans_tile_the_input(data: bytes, cuts: list[int]) -> None:
    whole, pending = parse_all([data])
    pieces, pieces_pending = parse_all(split(data, cuts))
    assert pieces == whole and pieces_pending == pending
    assert b"".join(e.raw for e in pieces) + pieces_pending == data
