"""BatchFramer: any stream, any chunking, any batching frames exactly as SseDecoder does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.frames import FRAME, FRAME_START, LIFECYCLE, RUN_OF_DELTAS, BatchFramer, FrameScanner
from proxy.sse import SseDecoder

T0 = 1_796_000_000.0
DELTAS = ("thread.message.delta", "d")

_name = st.sampled_from(["thread.message.delta", "d", "thread.run.created", "x", "", "dd", "d ", "done"])
_data = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=10)
_canonical = st.builds(lambda name, data: (b"" if name is None else b"event: " + name.encode() + b"\n")
                       + b"data: " + data.encode() + b"\n\n", st.none() | _name, _data)
_any = _canonical | st.sampled_from([
    b"data: a\ndata: b\n\n", b": comment\n\n", b"event: d\r\ndata: y\r\n\r\n", b"event: x\rdata: y\r\r",
    b"event: only\n\n", b"retry: 5\n\n", b"id: 7\ndata: z\n\n", b"\n\n", b"event: d\ndata: \xff\n\n",
    b"data: \xfe\n\n", b"data:nospace\n\n", b"event: cut\ndata: {\"partial\"",
])


@st.composite
def _batches(draw: st.DrawFn, frame: st.SearchStrategy[bytes]) -> list[list[bytes]]:
    body = b"".join(draw(st.lists(frame, min_size=1, max_size=10)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=8))))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]
    groups = sorted(set(draw(st.lists(st.integers(1, max(1, len(chunks) - 1)), max_size=4))))
    return [chunks[a:b] for a, b in zip([0, *groups], [*groups, len(chunks)], strict=True) if chunks[a:b]]


def _decoded(batches: list[list[bytes]]) -> list[tuple[object, ...]]:
    decoder, out, t = SseDecoder(), [], T0
    for batch in batches:
        for chunk in batch:
            t += 1
            out += [(e.event, e.data, e.raw, t) for e in decoder.feed(chunk)]
    out += [(e.event, e.data, e.raw, t) for e in decoder.close()]
    return [(seq, *row) for seq, row in enumerate(out)]


def _framed(batches: list[list[bytes]]) -> tuple[list[tuple[object, ...]], list[int]]:
    """The framer's items as events (a run of deltas split back into its frames), and the runs' sizes."""
    framer, out, runs, t = BatchFramer(FrameScanner(DELTAS)), [], [], T0
    for batch in batches:
        times = [t + i + 1 for i in range(len(batch))]
        t = times[-1]
        items = framer.feed(batch, times)
        for kind, seq, what, frames, at in items + (framer.close() if batch is batches[-1] else []):
            if kind == FRAME:
                out.append((seq, what.event, what.data, what.raw, at))
                continue
            assert kind == RUN_OF_DELTAS and frames.count(FRAME_START) == what
            runs.append(what)
            for i, event in enumerate(SseDecoder().feed(frames)):
                assert event.event in DELTAS
                out.append((seq + i, event.event, event.data, event.raw, at if i == 0 else None))
    assert framer.frames == len(out)
    return out, runs


def _same(got: list[tuple[object, ...]], want: list[tuple[object, ...]]) -> None:
    assert [g[:4] for g in got] == [w[:4] for w in want]
    # A run of deltas carries its first frame's arrival; every other frame carries its own.
    assert [g[4] for g in got if g[4] is not None] == [w[4] for g, w in zip(got, want, strict=True) if g[4] is not None]


@settings(max_examples=400, deadline=None)
@given(batches=_batches(_canonical))
def test_canonical_streams_frame_as_the_decoder_does_with_deltas_in_runs(batches) -> None:
    got, runs = _framed(batches)
    _same(got, _decoded(batches))
    assert all(n > 0 for n in runs)


@settings(max_examples=400, deadline=None)
@given(batches=_batches(_any))
def test_any_stream_any_chunking_any_batching_frames_as_the_decoder_does(batches) -> None:
    got, _ = _framed(batches)
    _same(got, _decoded(batches))


def test_lifecycle_frames_are_found_and_deltas_counted_between_them() -> None:
    body = (b"event: a\ndata: 1\n\n" + b"event: d\ndata: 2\n\n" * 3 + b"data: [DONE]\n\n"
            + b"event: dd\ndata: 3\n\n" + b"event: d\ndata: 4\n\n")
    buf = FRAME_START + body
    pieces = FrameScanner(DELTAS).scan(buf, len(buf))
    assert pieces is not None
    assert [(kind, index, count) for kind, index, count, _, _ in pieces] == [
        (LIFECYCLE, 0, 1), (RUN_OF_DELTAS, 1, 3), (LIFECYCLE, 4, 1), (LIFECYCLE, 5, 1), (RUN_OF_DELTAS, 6, 1)]
    assert [buf[start:stop] for kind, _, _, start, stop in pieces if kind == LIFECYCLE] == [
        b"event: a\ndata: 1", b"data: [DONE]", b"event: dd\ndata: 3"]
    assert FrameScanner(DELTAS).scan(FRAME_START + b"data: a\r\n\n", 12) is None


def test_a_long_event_in_small_pieces_is_joined_once() -> None:
    framer = BatchFramer(FrameScanner(DELTAS))
    event = b"event: x\ndata: " + b"y" * 100_000 + b"\n\n"
    items = []
    for i in range(0, len(event), 1000):
        items += framer.feed([event[i:i + 1000]], [T0 + i])
        assert framer.at_boundary == (i + 1000 >= len(event))
    [(kind, seq, sse, _, at)] = items
    assert (kind, seq, sse.event, len(sse.data), at) == (FRAME, 0, "x", 100_000, T0 + len(event) // 1000 * 1000)


def test_empty_chunks_change_nothing() -> None:
    framer = BatchFramer(FrameScanner(DELTAS))
    assert framer.feed([b"data: 1\n"], [T0]) == []
    assert framer.feed([b""], [T0 + 1]) == [] and not framer.at_boundary
    [(kind, seq, event, _, at)] = framer.feed([b"\n"], [T0 + 2])
    assert (kind, seq, event.data, at) == (FRAME, 0, "1", T0 + 2) and framer.at_boundary
    assert framer.feed([b""], [T0 + 3]) == [] and framer.at_boundary
