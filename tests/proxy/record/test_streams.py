"""A stream's bytes → rows → the events view: the same events the tap's own SSE parser sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.exchange import StreamBytes
from proxy.record.migrations import TABLES, fresh_database
from proxy.record.streams import canonical_text, stream_rows
from proxy.record.writer import write_batch
from proxy.sse import SseDecoder

T0 = 1_796_000_000.25


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = fresh_database()
    connection.execute("set TimeZone = 'UTC'")
    return connection


def _expected(chunks: list[bytes], times: list[float]) -> list[tuple[object, ...]]:
    """What the tap sees: each frame at the arrival of the chunk that completed it."""
    decoder, out = SseDecoder(), []
    for chunk, at in zip(chunks, times, strict=True):
        out += [(e.event, e.data, e.raw, at) for e in decoder.feed(chunk)]
    out += [(e.event, e.data, e.raw, times[-1]) for e in decoder.close()]
    return [(seq, *row) for seq, row in enumerate(out)]


def _recorded(con: duckdb.DuckDBPyConnection, request_id: str, segments: list[StreamBytes]) -> list[tuple[object, ...]]:
    items, events = [], []
    for segment in segments:
        row, rows = stream_rows(request_id, "run_1", segment)
        items += [("response_streams", row)] if row is not None else []
        events += rows
    write_batch(con, TABLES, items, events=events)
    got = con.execute("select seq, event, data, raw, received_at, run_id from events where request_id = ? order by seq",
                      [request_id]).fetchall()
    assert {run_id for *_, run_id in got} <= {"run_1"}
    return [(seq, event, data, raw, at.timestamp()) for seq, event, data, raw, at, _ in got]


def _same(got: list[tuple[object, ...]], want: list[tuple[object, ...]]) -> None:
    assert [g[:4] for g in got] == [w[:4] for w in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g[4] - w[4]) <= 1e-6  # microseconds, however each side rounds


_name = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
_canonical_frame = st.builds(
    lambda name, data: (b"" if name is None else b"event: " + name.encode() + b"\n")
    + b"data: " + data.encode() + b"\n\n",
    st.none() | _name, _name)
_any_frame = _canonical_frame | st.sampled_from([
    b"data: a\ndata: b\n\n", b": comment\n\n", b"event: x\r\ndata: y\r\n\r\n", b"event: x\rdata: y\r\r",
    b"event: only\n\n", b"retry: 5\n\n", b"id: 7\ndata: z\n\n", b"event: x\n{\"bare\": 1}\n\n", b"\n\n",
    b"data: \xff\xfe\n\n", b"data:nospace\n\n", b"event: cut\ndata: {\"partial\"",
])


@st.composite
def _chunked(draw: st.DrawFn, frame: st.SearchStrategy[bytes]) -> list[bytes]:
    body = b"".join(draw(st.lists(frame, min_size=1, max_size=8)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]


_ids = iter(range(10**9))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=_chunked(_canonical_frame))
def test_canonical_streams_are_one_row_and_the_view_frames_them_as_the_tap_does(con, chunks) -> None:
    times = [T0 + i * 0.001 for i in range(len(chunks))]
    segment = StreamBytes(0, chunks, times, True)
    row, rows = stream_rows("x", None, segment)
    assert row is not None and rows == []
    _same(_recorded(con, f"canon{next(_ids)}", [segment]), _expected(chunks, times))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=_chunked(_any_frame))
def test_any_stream_any_chunking_records_the_events_the_tap_sees(con, chunks) -> None:
    times = [T0 + i * 0.001 for i in range(len(chunks))]
    _same(_recorded(con, f"any{next(_ids)}", [StreamBytes(0, chunks, times, True)]), _expected(chunks, times))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(_any_frame.filter(lambda f: f.endswith(b"\n\n") and not f.endswith(b"\r\n\r\n")),
                       min_size=2, max_size=8), data=st.data())
def test_segments_cut_at_frame_boundaries_number_their_events_on(con, frames, data) -> None:
    # The tap cuts a segment only where its decoder holds no partial frame; seq0 carries on.
    cut = data.draw(st.integers(1, len(frames) - 1))
    first, second = b"".join(frames[:cut]), b"".join(frames[cut:])
    decoder = SseDecoder()
    seq0 = len(decoder.feed(first))
    assert decoder.at_frame_boundary
    segments = [StreamBytes(0, [first], [T0], False), StreamBytes(seq0, [second], [T0 + 1], True)]
    _same(_recorded(con, f"seg{next(_ids)}", segments), _expected([first, second], [T0, T0 + 1]))


def test_record_content_false_stores_no_text(con) -> None:
    row, rows = stream_rows("rc", "run_1", StreamBytes(0, [b"event: a\ndata: secret\n\n"], [T0], True),
                            record_content=False)
    assert row is None
    assert rows == [("rc", 0, "a", None, datetime.fromtimestamp(T0, UTC), "run_1", None, None)]
    # A Responses event keeps its sequence number (an id), not its data.
    event = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":7,' \
            b'"delta":"secret"}\n\n'
    _, [kept] = stream_rows("rc", "run_1", StreamBytes(7, [event], [T0], True), record_content=False)
    assert (kept[3], kept[6], kept[7]) == (None, None, 7)


def test_canonical_means_what_the_view_can_split() -> None:
    assert canonical_text(b"event: a\ndata: {}\n\ndata: [DONE]\n\n") == "event: a\ndata: {}\n\ndata: [DONE]\n\n"
    for other in (b"", b"data: a\r\n\r\n", b"data: a\ndata: b\n\n", b": c\n\n", b"data: a\n\n\n", b"data: \xff\n\n",
                  b"event: a\n\n", b"data: a\n"):
        assert canonical_text(other) is None, other


def test_the_view_reads_the_received_time_of_the_chunk_with_the_blank_line(con) -> None:
    # The frame's last LF arrives in the first chunk, its blank line in the second.
    chunks = [b"event: a\ndata: 1\n", b"\nevent: b\ndata: 2\n\n"]
    times = [T0, T0 + 0.5]
    got = _recorded(con, "blank-line", [StreamBytes(0, chunks, times, True)])
    assert [(seq, event, at) for seq, event, _, _, at in got] == [(0, "a", T0 + 0.5), (1, "b", T0 + 0.5)]
    assert datetime.fromtimestamp(T0 + 0.5, UTC) - datetime.fromtimestamp(T0, UTC) == timedelta(seconds=0.5)
